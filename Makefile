# genretr — `make help` lists the targets. Every target creates .venv and installs on first use.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch (a local wheel on these machines; a bare `torch` would pull a multi-GB CUDA build).
TORCH_SPEC ?= torch==2.13.0
# Where these machines keep that wheel: uv installs it from there (6 s against pip's 20 s); elsewhere pip finds it.
TORCH_WHEELS ?= /opt/wheels
# The installer of the locked packages (pip is the fallback).
UV_SPEC ?= uv==0.13.9
ARGS ?=

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-22s %s\n", $$1, $$2}'

PIP := $(PY) -m pip install -q --disable-pip-version-check
LOCK := requirements.lock

UV := $(VENV)/bin/uv pip install -q --python $(PY)

# The exact versions the test suite last passed with (requirements.lock), then genretr itself without
# resolving again: a fresh clone installs what CI tested, whatever PyPI has published since.  torch comes
# from the CPU wheel in TORCH_WHEELS (uv, offline, without its dependencies: the lock has them), else from
# pip (which finds that wheel through these machines' pip config); the rest from uv, which downloads and
# unpacks in parallel (34 s against pip's 67 s for the whole install on a 2-core machine), pip the fallback.
# uv compiles the packages' bytecode at install (--compile-bytecode; pip does by default): where
# PYTHONDONTWRITEBYTECODE is set, as on these machines, Python never writes it and every process would
# compile transformers and lightning again on import.
$(VENV)/.installed: pyproject.toml $(LOCK)
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) "$(UV_SPEC)"
	$(UV) --compile-bytecode --no-index --find-links $(TORCH_WHEELS) --no-deps "$(TORCH_SPEC)" || $(PIP) "$(TORCH_SPEC)"
	$(UV) --compile-bytecode -r $(LOCK) || $(PIP) -r $(LOCK)
	$(UV) --no-deps -e . || $(PIP) --no-deps -e .
	$(PY) -m pip check --disable-pip-version-check
	@touch $@

install: $(VENV)/.installed ## create .venv and install the locked versions (requirements.lock) and genretr

lock: ## refresh requirements.lock on purpose: the newest versions pyproject.toml's ranges admit, in a scratch venv
	rm -rf .lock-venv && python3 -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	.lock-venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
	{ echo "# genretr's pinned environment: \`make install\` installs exactly these; \`make lock\` refreshes them."; \
	  echo "# Made by \`make lock\` with $$(.lock-venv/bin/python --version) on $$(date -u +%Y-%m-%d); torch is the CPU build"; \
	  echo "# (TORCH_SPEC in the Makefile installs it first; its local '+cpu' label is dropped here)."; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable --disable-pip-version-check | sed 's/+cpu$$//'; } > $(LOCK)
	rm -rf .lock-venv

run: install ## the default experiment: shapes, embedding baseline + string IDs with a T5 decoder
	$(PY) -m genretr.run method=embedding $(ARGS)
	$(PY) -m genretr.run $(ARGS)

# One pytest-xdist worker per core (at most 4), each pinned to its core (tests/conftest.py), a test file per
# worker at a time so that a module's fixtures are built once, the longest files first (tests/conftest.py's
# LONGEST_FIRST; --no-loadscope-reorder keeps that order: xdist would sort the files by their number of tests).
XDIST := -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder

test: install ## the test suite (no network, < 10 min on 2 cores)
	$(PY) -m pytest -q -m "not slow" $(XDIST) $(ARGS)

test-slow: install ## the slow tests too
	$(PY) -m pytest -q $(XDIST) $(ARGS)

bench-decoding: install ## the decoding benchmark (add ARGS=--quick for a 3-minute subset); CSV + PNG in bench_out/
	$(PY) -m genretr.bench decoding $(ARGS)

# The tiny end-to-end configs of every model family, the decoding benchmark and issue 18's beam-30 figure on the
# GPU, then the default experiment at full size (issues 16, 18): run it on a GPU machine whenever one is available
# and report it.  Needs a CUDA build of torch (the lock's is the CPU one).  ARGS: overrides for every run.
gpu-check: install ## on a GPU machine: tiny runs of every family, the decoding bench, beam 30, the default at full size
	PY=$(PY) GPU_CHECK_ARGS="$(ARGS)" experiments/hardware/gpu_check.sh

bench-training: install ## training throughput of the default models, fp32 vs bf16, 1 vs 2 threads (ARGS=--quick: smoke); bench_out/training/
	$(PY) -m genretr.bench training $(ARGS)

reproduce-smoke: install ## a 2x2 multirun on shapes (encoder x method) and its table
	$(PY) -m genretr.run -m experiment=smoke hydra.sweep.dir=multirun/smoke $(ARGS)
	$(PY) -m genretr.report multirun/smoke

# Paper tables on shapes: a Hydra multirun, then our table beside the paper's numbers (genretr.report).
# Every stage is cached (.cache/genretr), so tables that share models reuse them; a killed target resumes.
# Every row runs over SEEDS seeds (0 .. SEEDS-1), JOBS runs side by side with one torch thread each
# (conf/hydra/launcher/parallel.yaml); the report prints mean ± std over seeds and a paired test per ordering.
# A target first removes its earlier results (multirun/<table>; the models stay in the cache), so runs of
# other code or other seeds never mix into its table.
# One pattern rule serves every table: `make reproduce-<table>` runs `python -m genretr.reproduce PRESET`, which
# reads the preset's `report:` block (conf/experiment/PRESET.yaml: its sweeps, reference YAML, metrics, plot),
# runs the sweeps with ARGS appended to each, then the report (`make reproduce-<table> ARGS=--dry-run` prints them).
# PRESET is the target's name with `_` for `-` (reproduce-grace-table1: grace_table1) unless PRESET.<name> says.
# The `reproduce-<table>: ## ...` lines below only describe the targets for `make help`.  They are not .PHONY:
# make looks for a pattern rule only for targets that are not (and their phony `install` prerequisite still
# makes them run every time).
SEEDS ?= 3
JOBS ?= 2
SEED_LIST = $(shell seq -s, 0 $$(( $(SEEDS) - 1 )))
SWEEP = $(PY) -m genretr.run -m seed=$(SEED_LIST) hydra/launcher=parallel hydra.launcher.n_jobs=$(JOBS)
REPORT := $(PY) -m genretr.report
PRESET.table1 := ssid_table1
PRESET.table2 := ssid_table2
PRESET.table3 := ssid_table3

reproduce-%: install
	$(PY) -m genretr.reproduce $(or $(PRESET.$*),$(subst -,_,$*)) --seeds $(SEEDS) --jobs $(JOBS) $(ARGS)

reproduce-grace-table1: ## GRACE Table 1 on shapes: every identifier type + the embedding baseline
reproduce-grace-table2: ## GRACE Table 2 on shapes: w/o learning to memorize, w/o constrained generation
reproduce-grace-beam: ## GRACE Appendix B on shapes: beam size sweep, table + PNG
reproduce-grace-table3: ## GRACE Table 3 on shapes: image tokenization beside structured and atomic
reproduce-grace-poolsize: ## GRACE: identifiers as the test pool grows (200 and 2,000 images), table + PNG

# --- CART paper tables on shapes ---
# Every cart_table* and cart_vs_grace preset builds on conf/experiment/cart_base.yaml (shrunk: 450 train / 100 test
# shapes images, a d_model 128 decoder, 10 epochs), so the base CART model is trained once and reused by every table
# through the artifact cache (cart_recipe builds on grace_table1 instead).
# Paper numbers (Flickr30K) print in parentheses; MRR@10 beside the recalls as CART reports it.
# A model takes ~4 min on an idle 2-core CPU.  With 3 seeds (README): table4 ~49 min, table5 ~40, table6 ~59,
# table10 ~42, table11 ~31 (AVX2-only or beside other runs; table6 and table10 reusing the default row), table7 16
# (AMX, two jobs); on a busy machine two torch threads were ~10x slower than one: prefer `OMP_NUM_THREADS=1 make ...`.
reproduce-cart-table4: ## CART Table 4 on shapes: w/o K-Means, RQ-VAE, fusion, consistency, caption enhancement
reproduce-cart-table5: ## CART Table 5 on shapes: 1-5 encoder layers, table + PNG
reproduce-cart-table6: ## CART Table 6 on shapes: K-Means K x codebook size, table + PNG
reproduce-cart-table7: ## CART Table 7 on shapes: identifier length 4-6 (2-4 RQ-VAE codebooks)
reproduce-cart-table10: ## CART Table 10 on shapes: 1-5 decoder layers, table + PNG
reproduce-cart-table11: ## CART Table 11 on shapes: codebook dimension 32, 64, 128
reproduce-cart-vs-grace: ## CART Table 3 on shapes: cart/structured/string IDs x cart/t5 decoders, + GRACE's recipe

# Not a preset's table: cart_vs_grace at other sizes, reported beside reproduce-grace-table1's runs. At this size
# CART's decoder trains at its paper's batch of 256 (Sec. 4.2; cart_base's 32 is for the 450-image tables, where
# 256 leaves ~10 steps an epoch): +3.8 R@1 and +5.1 R@10 over 32 here, every seed (README).
reproduce-cart-vs-grace-full: reproduce-grace-table1 ## CART vs GRACE's IDs at shapes' full size (2,000 + 500 images; ~40-50 min after it on an AMX CPU)
	rm -rf multirun/cart_vs_grace_large
	$(SWEEP) experiment=cart_vs_grace identifier=cart,structured backbone=cart dataset.splits.train=2000 \
		dataset.splits.val=200 dataset.splits.test=500 backbone.fit.batch_size=256 \
		hydra.sweep.dir=multirun/cart_vs_grace_large $(ARGS)
	$(REPORT) multirun/cart_vs_grace_large multirun/grace_table1 --reference experiments/cart/table3_full_flickr30k.yaml \
		--metrics R@1,R@5,R@10,MRR@10 --out multirun/cart_vs_grace_large/table.md
# Why CART's IDs do better on grace_table1's recipe than on cart_base's at full size (conf/experiment/cart_recipe.yaml).
reproduce-cart-recipe: ## CART's IDs at full size: grace_table1's recipe, one cart_base setting at a time (~3 h)

CART_TABLES := reproduce-cart-table4 reproduce-cart-table5 reproduce-cart-table6 reproduce-cart-table7 \
	reproduce-cart-table10 reproduce-cart-table11 reproduce-cart-vs-grace
reproduce-cart: $(CART_TABLES) ## every 450-image CART table above (not -full, -recipe), in turn

# --- GENIUS paper tables on shapes.
# Presets: conf/experiment/genius_*.yaml; paper numbers: experiments/genius/*.yaml. Tables 1, 2, 4, 5, 8, 9, 11 and the
# decoder-input table share one trained model (genius_mbeir; 4/5/8/11 and decoder-input retrain only their variants)
# through the artifact cache: run table1 first. Table 3 reuses reproduce-grace-table1's encoder and structured / image-token models.
# One seed, before SEEDS=3, on this 2-core CPU while busy (1 thread): table1 ~11 min from a cold cache, then table2 ~3,
# table4 ~18, table5 ~19, table9 ~2, table11 ~10; table3 ~7 after reproduce-grace-table1; table7 < 1.
# With 3 seeds, two jobs side by side (21c80af): decoder-input 16.9 min from a cold cache, then table8 11.0 min
# and table4 8.7 min (table8 alone from a cold cache: 18.8 min at 4ad0563); at 2720213: table1 18.8 min from a
# cold cache, then table2 4.6 and table9 2.2; at be3dcb8 (AVX2-only, fp32): table5 31.4 min from a cold cache, then
# table11 10.2; at 462078a table3 50.9 min from a cold cache (its GRACE rows train the T5 default 30 epochs).
GENIUS := experiments/genius

reproduce-genius-table1: ## GENIUS Table 1 on shapes: eight tasks, each in its own pool; GENIUS, GENIUS_R, embedding
reproduce-genius-table2: ## GENIUS Table 2 on shapes: universal pool (Table 1's model); GENIUS, GENIUS_R, embedding
reproduce-genius-table3: ## GENIUS Table 3 on shapes: text-to-image, GENIUS(_R) beside GRACE and IRGen-style IDs
reproduce-genius-table4: ## GENIUS Table 4 on shapes: ablations (modality decoupling, query augmentation, L_cl, L_mse)
reproduce-genius-table8: ## GENIUS Table 8 on shapes: first code learned (paper), by a classifier, none, given
reproduce-genius-decoder-input: ## GENIUS's decoder reading the fused z (Eq. 9) against the encoder's vectors
reproduce-genius-table5: ## GENIUS Table 5 on shapes: codebook size K x code levels M

reproduce-genius-table7: install ## GENIUS Table 7: storage per item (decoding benchmark's bytes section) + the paper's numbers
	$(PY) -m genretr.bench decoding --skip qps,hf,constraint,faiss --corpus 1000,10000,100000 \
		--out bench_out/genius_table7 $(ARGS)
	@echo "Paper (GENIUS Table 7, $(GENIUS)/table7_storage.yaml): CLIP 3,072 bytes/item; GENIUS 98 bits = 12.25 bytes/item"

reproduce-genius-table9: ## GENIUS Table 9 on shapes: beam size 1-50 (evaluation only), table + PNG
reproduce-genius-table11: ## GENIUS Table 11 on shapes: larger codebooks and codebooks shared across levels

# --- SSID tables on shapes (the users' `make reproduce-table1` is SSID's Table I). SSID's identifiers and
# rationales come from generator=keywords, the offline stand-in for an MLLM. Tables I and II reuse
# reproduce-grace-table1's models for GRACE's identifiers (run it first, or they are trained here).
# Measured per run (2-core Intel Xeon with AMX, bf16-mixed, one thread, two runs side by side, 72c9b0c/d4a0e8e):
# SSID with its rationale 47-49 min, SSID without it (table3's none) 16 min, semantic IDs 34 min, atomic 4.8, image
# tokens 7.1, numeric/string/structured ~4-5 (README, GRACE Table 1); the fewshot preset 34-42 min at N = 10,000,
# 10-14.5 at 3,000, 3.5-5 at 1,000 (58-65 min a seed). So with 3 seeds from a cold cache each of table1, table2,
# table3 and ssid-fewshot takes ~1.6-3.2 h (plus the cold cache's dataset and encoder stages), over the 40-minute budget.
reproduce-table1: ## SSID Table I on shapes: GRACE's four ID types, SSID, semantic IDs with SSID's counters (T5)
reproduce-table2: ## SSID Table II on shapes: SSID vs atomic and image tokenization (T5), SSID on tiny MLLMs
reproduce-table3: ## SSID Table III on shapes: the rationale in training and inference, training only, neither
reproduce-ssid-fewshot: ## SSID Fig. 3 on shapes: fine-tuning on N samples, test identifiers unseen; table + PNG

# Its 6 settings run JOBS at a time (a sub-make's -j; SEEDS runs one after another within a setting), one torch
# thread each with JOBS=2 on 2 cores; their shared stages (dataset, encoder, captioner) are built once (stage locks),
# a second setting waiting for the first's.  With 3 seeds, at the run costs measured on the 2-core Xeon above (one
# thread, two runs side by side): 9 semantic-ID runs (~34 min each) and 9 SSID runs with rationales (47-49 min
# each), ~12 h of runs, ~6.5 h with JOBS=2, plus the cold cache's shared stages. On a slower 2-core Intel VM (README's
# AMX row, 2026-12) the runs took 61-80 min (SSID) and ~60-75 min (semantic) each, two side by side: ~10 h with JOBS=2.
# Each setting's lines name it (all of its output also in multirun/ssid_describer/<setting>.log), its mean ± std
# printed when its seeds are done, each seed's first-hit ranks under multirun/ssid_describer/<setting>/; then SSID
# is tested against semantic IDs under each describer (paired test on all five queries, the four, and the queries
# whose target has identifier words of its own in both runs; Holm over the call's 36 tests; compare.txt), and each
# scheme with the train images described by the captioner against the same scheme under Table I's captioner, whose
# train identifiers come from the real captions (Holm over 24; compare_train_described.txt).
# Semantic IDs take SSID's "#j" counters (as reproduce-table1's like-for-like row), so each describer's pair
# differs in the identifier scheme alone.
DESCRIBED = multirun/ssid_describer
DESCRIBER = $(PY) experiments/ssid/describer_oracle.py --seeds $(SEED_LIST) --jobs $(JOBS) experiment=ssid_table1
SEMANTIC_COUNTERS = identifier=semantic identifier.collisions=disambiguate
DESCRIBER_ARGS.captioner-semantic = --captioner $(SEMANTIC_COUNTERS)
DESCRIBER_ARGS.captioner-all-semantic = --captioner $(SEMANTIC_COUNTERS) identifier.train_caption=generated
DESCRIBER_ARGS.pair-caption-semantic = $(SEMANTIC_COUNTERS)
DESCRIBER_ARGS.captioner-ssid = --captioner identifier=ssid
DESCRIBER_ARGS.captioner-all-ssid = --captioner identifier=ssid identifier.describe=all
DESCRIBER_ARGS.pair-caption-ssid = identifier=ssid
DESCRIBERS = captioner captioner-all pair-caption
DESCRIBER_SETTINGS = $(foreach d,$(DESCRIBERS),$(d)-ssid $(d)-semantic)
reproduce-ssid-describer: install ## SSID vs semantic IDs under three describers of the images (~6.5-10 h with 3 seeds, JOBS=2)
	$(MAKE) --no-print-directory -j$(JOBS) $(addprefix ssid-describer-,$(DESCRIBER_SETTINGS))
	set -o pipefail; $(PY) experiments/ssid/describer_oracle.py \
		$(foreach d,$(DESCRIBERS),--compare $(DESCRIBED)/$(d)-ssid $(DESCRIBED)/$(d)-semantic) | tee $(DESCRIBED)/compare.txt
	set -o pipefail; $(PY) experiments/ssid/describer_oracle.py \
		$(foreach s,ssid semantic,--compare $(DESCRIBED)/captioner-all-$(s) $(DESCRIBED)/captioner-$(s)) \
		| tee $(DESCRIBED)/compare_train_described.txt

ssid-describer-%: install  # one setting of reproduce-ssid-describer (not .PHONY: make applies pattern rules to files only)
	$(if $(DESCRIBER_ARGS.$*),,$(error ssid-describer-$*: no such setting; one of: $(DESCRIBER_SETTINGS)))
	rm -rf $(DESCRIBED)/$* && mkdir -p $(DESCRIBED)
	set -o pipefail; $(DESCRIBER) --out $(DESCRIBED)/$* $(DESCRIBER_ARGS.$*) $(ARGS) 2>&1 | tee $(DESCRIBED)/$*.log

reproduce-efficiency: install ## q/s vs number of candidates: embedding baseline and generative decoders (CSV + PNG)
	$(PY) -m genretr.bench decoding --shapes genius,cart,cart_fusion --skip hf,constraint,bytes --beams 30 \
		--batches 32 --out bench_out/efficiency $(ARGS)

clean: ## remove outputs (keeps .venv and the artifact cache)
	rm -rf outputs multirun

clean-cache: ## remove the artifact cache (.cache/genretr)
	rm -rf .cache/genretr

# The preset tables (reproduce-grace-table1 ...) are not here: see the pattern rule reproduce-% above.
.PHONY: help install lock run test test-slow bench-decoding gpu-check reproduce-smoke clean clean-cache reproduce-efficiency \
	reproduce-cart-vs-grace-full reproduce-cart reproduce-genius-table7 reproduce-ssid-describer
