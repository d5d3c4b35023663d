# genretr — `make help` lists the targets. Every target creates .venv and installs on first use.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch (a local wheel on these machines; a bare `torch` would pull a multi-GB CUDA build).
TORCH_SPEC ?= torch==2.13.0
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
# from pip (it finds the CPU wheel on these machines' disk); the rest from uv, which downloads and unpacks in
# parallel (34 s against pip's 67 s for the whole install on a 2-core machine), with pip as the fallback.
$(VENV)/.installed: pyproject.toml $(LOCK)
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) "$(TORCH_SPEC)" "$(UV_SPEC)"
	$(UV) -r $(LOCK) || $(PIP) -r $(LOCK)
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

test: install ## the test suite (no network, < 10 min on 2 cores)
	$(PY) -m pytest -q -m "not slow" $(ARGS)

test-slow: install ## the slow tests too
	$(PY) -m pytest -q $(ARGS)

bench-decoding: install ## the decoding benchmark (add ARGS=--quick for a 3-minute subset); CSV + PNG in bench_out/
	$(PY) -m genretr.bench decoding $(ARGS)

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
SEEDS ?= 3
JOBS ?= 2
SEED_LIST = $(shell seq -s, 0 $$(( $(SEEDS) - 1 )))
SWEEP = $(PY) -m genretr.run -m seed=$(SEED_LIST) hydra/launcher=parallel hydra.launcher.n_jobs=$(JOBS)
REPORT := $(PY) -m genretr.report
GRACE := experiments/grace

reproduce-grace-table1: install ## GRACE Table 1 on shapes: every identifier type + the embedding baseline
	rm -rf multirun/grace_table1
	$(SWEEP) experiment=grace_table1 hydra.sweep.dir=multirun/grace_table1 $(ARGS)
	$(SWEEP) method=embedding progress=false hydra.sweep.dir=multirun/grace_table1/embedding $(ARGS)
	$(REPORT) multirun/grace_table1 --reference $(GRACE)/table1_flickr30k.yaml --out multirun/grace_table1/table.md

reproduce-grace-table2: install ## GRACE Table 2 on shapes: w/o learning to memorize, w/o constrained generation
	rm -rf multirun/grace_table2
	$(SWEEP) experiment=grace_table2 hydra.sweep.dir=multirun/grace_table2 $(ARGS)
	$(REPORT) multirun/grace_table2 --reference $(GRACE)/table2_flickr30k.yaml --out multirun/grace_table2/table.md

reproduce-grace-beam: install ## GRACE Appendix B on shapes: beam size sweep, table + PNG
	rm -rf multirun/grace_beam
	$(SWEEP) experiment=grace_beam hydra.sweep.dir=multirun/grace_beam $(ARGS)
	$(REPORT) multirun/grace_beam --out multirun/grace_beam/table.md --plot decoding.num_beams \
		--series identifier --metrics R@1,R@10 --png multirun/grace_beam/beam.png

reproduce-grace-table3: install ## GRACE Table 3 on shapes: image tokenization beside structured and atomic
	rm -rf multirun/grace_table3
	$(SWEEP) experiment=grace_table3 hydra.sweep.dir=multirun/grace_table3 $(ARGS)
	$(REPORT) multirun/grace_table3 --reference $(GRACE)/table3_flickr30k.yaml --out multirun/grace_table3/table.md

reproduce-grace-poolsize: install ## GRACE: identifiers as the test pool grows (200 and 2,000 images), table + PNG
	rm -rf multirun/grace_poolsize
	$(SWEEP) experiment=grace_poolsize hydra.sweep.dir=multirun/grace_poolsize $(ARGS)
	$(REPORT) multirun/grace_poolsize --out multirun/grace_poolsize/table.md --plot dataset.splits.test \
		--series identifier --metrics R@1,R@10 --png multirun/grace_poolsize/poolsize.png

# --- CART paper tables on shapes ---
# Every preset builds on conf/experiment/cart_base.yaml (shrunk: 450 train / 100 test shapes images, a
# d_model 128 decoder, 10 epochs), so the base CART model is trained once and reused by every table
# through the artifact cache.
# Paper numbers (Flickr30K) print in parentheses; MRR@10 beside the recalls as CART reports it.
# A model takes ~4 min on an idle 2-core CPU, so a table costs ~4 min per new model (table6: 8, table4: 5;
# on a busy machine two torch threads were ~10x slower than one: prefer `OMP_NUM_THREADS=1 make ...` there).
CART := experiments/cart
CART_METRICS := --metrics R@1,R@5,R@10,MRR@10

reproduce-cart-table4: install ## CART Table 4 on shapes: w/o K-Means, RQ-VAE, fusion, consistency, caption enhancement
	rm -rf multirun/cart_table4
	$(SWEEP) experiment=cart_table4 hydra.sweep.dir=multirun/cart_table4 $(ARGS)
	$(REPORT) multirun/cart_table4 --reference $(CART)/table4_flickr30k.yaml $(CART_METRICS) \
		--out multirun/cart_table4/table.md

reproduce-cart-table5: install ## CART Table 5 on shapes: 1-5 encoder layers, table + PNG
	rm -rf multirun/cart_table5
	$(SWEEP) experiment=cart_table5 hydra.sweep.dir=multirun/cart_table5 $(ARGS)
	$(REPORT) multirun/cart_table5 --reference $(CART)/table5_flickr30k.yaml $(CART_METRICS) \
		--out multirun/cart_table5/table.md --plot backbone.model.encoder_layers --png multirun/cart_table5/layers.png

reproduce-cart-table6: install ## CART Table 6 on shapes: K-Means K x codebook size, table + PNG
	rm -rf multirun/cart_table6
	$(SWEEP) experiment=cart_table6 hydra.sweep.dir=multirun/cart_table6 $(ARGS)
	$(REPORT) multirun/cart_table6 --reference $(CART)/table6_flickr30k.yaml $(CART_METRICS) \
		--out multirun/cart_table6/table.md --plot identifier.codebook_size --series identifier.k \
		--png multirun/cart_table6/size.png

reproduce-cart-table7: install ## CART Table 7 on shapes: identifier length 4-6 (2-4 RQ-VAE codebooks)
	rm -rf multirun/cart_table7
	$(SWEEP) experiment=cart_table7 hydra.sweep.dir=multirun/cart_table7 $(ARGS)
	$(REPORT) multirun/cart_table7 --reference $(CART)/table7_flickr30k.yaml $(CART_METRICS) \
		--out multirun/cart_table7/table.md

reproduce-cart-table10: install ## CART Table 10 on shapes: 1-5 decoder layers, table + PNG
	rm -rf multirun/cart_table10
	$(SWEEP) experiment=cart_table10 hydra.sweep.dir=multirun/cart_table10 $(ARGS)
	$(REPORT) multirun/cart_table10 --reference $(CART)/table10_flickr30k.yaml $(CART_METRICS) \
		--out multirun/cart_table10/table.md --plot backbone.model.decoder_layers --png multirun/cart_table10/layers.png

reproduce-cart-table11: install ## CART Table 11 on shapes: codebook dimension 32, 64, 128
	rm -rf multirun/cart_table11
	$(SWEEP) experiment=cart_table11 hydra.sweep.dir=multirun/cart_table11 $(ARGS)
	$(REPORT) multirun/cart_table11 --reference $(CART)/table11_flickr30k.yaml $(CART_METRICS) \
		--out multirun/cart_table11/table.md

reproduce-cart-vs-grace: install ## CART Table 3 on shapes: cart/structured/string IDs x cart/t5 decoders, + GRACE's recipe
	rm -rf multirun/cart_vs_grace
	$(SWEEP) experiment=cart_vs_grace hydra.sweep.dir=multirun/cart_vs_grace $(ARGS)
	$(SWEEP) experiment=cart_vs_grace identifier=structured,string backbone=t5 train.memorize=true \
		train.pseudo_queries=false train.pseudo_queries_for=missing hydra.sweep.dir=multirun/cart_vs_grace/grace_recipe $(ARGS)
	$(REPORT) multirun/cart_vs_grace --reference $(CART)/table3_flickr30k.yaml $(CART_METRICS) \
		--out multirun/cart_vs_grace/table.md

reproduce-cart-vs-grace-full: reproduce-grace-table1 ## CART vs GRACE's IDs at shapes' full size (2,000 + 500 images; ~1 h)
	rm -rf multirun/cart_vs_grace_large
	$(SWEEP) experiment=cart_vs_grace identifier=cart,structured backbone=cart dataset.splits.train=2000 \
		dataset.splits.val=200 dataset.splits.test=500 hydra.sweep.dir=multirun/cart_vs_grace_large $(ARGS)
	$(REPORT) multirun/cart_vs_grace_large multirun/grace_table1 --reference $(CART)/table3_flickr30k.yaml $(CART_METRICS) \
		--out multirun/cart_vs_grace_large/table.md

reproduce-cart: reproduce-cart-table4 reproduce-cart-table5 reproduce-cart-table6 reproduce-cart-table7 \
	reproduce-cart-table10 reproduce-cart-table11 reproduce-cart-vs-grace ## every CART table above, in turn

# --- GENIUS paper tables on shapes.
# Presets: conf/experiment/genius_*.yaml; paper numbers: experiments/genius/*.yaml. Tables 1, 2, 4, 5, 9, 11 share one
# trained model (genius_mbeir; tables 4/5/11 retrain only their variants) through the artifact cache: run table1
# first. Table 3 reuses reproduce-grace-table1's encoder and structured / image-token models.
# Measured costs on this 2-core CPU while busy (1 thread): table1 ~11 min from a cold cache, then table2 ~3,
# table4 ~18, table5 ~19, table9 ~2, table11 ~10; table3 ~7 after reproduce-grace-table1; table7 < 1.
GENIUS := experiments/genius
GENIUS_COLS := --tasks t2i,i2t,t2t,t2it,it2i --metrics R@5

reproduce-genius-table1: install ## GENIUS Table 1 on shapes: eight tasks, each in its own pool; GENIUS, GENIUS_R, embedding
	rm -rf multirun/genius_table1
	$(SWEEP) experiment=genius_table1 hydra.sweep.dir=multirun/genius_table1 $(ARGS)
	$(SWEEP) experiment=genius_table1 method=embedding hydra.sweeper.params=null \
		hydra.sweep.dir=multirun/genius_table1/embedding $(ARGS)
	$(REPORT) multirun/genius_table1 --reference $(GENIUS)/table1_mbeir.yaml --metrics R@5 \
		--out multirun/genius_table1/table.md

reproduce-genius-table2: install ## GENIUS Table 2 on shapes: universal pool (Table 1's model); GENIUS, GENIUS_R, embedding
	rm -rf multirun/genius_table2
	$(SWEEP) experiment=genius_table2 hydra.sweep.dir=multirun/genius_table2 $(ARGS)
	$(SWEEP) experiment=genius_table2 method=embedding hydra.sweeper.params=null \
		hydra.sweep.dir=multirun/genius_table2/embedding $(ARGS)
	$(REPORT) multirun/genius_table2 --reference $(GENIUS)/table2_mbeir.yaml --metrics R@5 \
		--out multirun/genius_table2/table.md

reproduce-genius-table3: install ## GENIUS Table 3 on shapes: text-to-image, GENIUS(_R) beside GRACE and IRGen-style IDs
	rm -rf multirun/genius_table3
	$(SWEEP) experiment=genius_table3 hydra.sweep.dir=multirun/genius_table3/genius $(ARGS)
	$(SWEEP) experiment=grace_table3 identifier=structured,image_tokens \
		hydra.sweep.dir=multirun/genius_table3/grace $(ARGS)
	$(REPORT) multirun/genius_table3 --reference $(GENIUS)/table3_flickr30k.yaml \
		--out multirun/genius_table3/table_flickr30k.md
	$(REPORT) multirun/genius_table3 --reference $(GENIUS)/table3_coco.yaml --out multirun/genius_table3/table_coco.md

reproduce-genius-table4: install ## GENIUS Table 4 on shapes: ablations (modality decoupling, query augmentation, L_cl, L_mse)
	rm -rf multirun/genius_table4
	$(SWEEP) experiment=genius_table4 hydra.sweep.dir=multirun/genius_table4 $(ARGS)
	$(REPORT) multirun/genius_table4 --reference $(GENIUS)/table4_mbeir.yaml $(GENIUS_COLS) \
		--out multirun/genius_table4/table.md

reproduce-genius-table5: install ## GENIUS Table 5 on shapes: codebook size K x code levels M
	rm -rf multirun/genius_table5
	$(SWEEP) experiment=genius_table5 hydra.sweep.dir=multirun/genius_table5 $(ARGS)
	$(REPORT) multirun/genius_table5 --reference $(GENIUS)/table5_mbeir.yaml $(GENIUS_COLS) \
		--out multirun/genius_table5/table.md

reproduce-genius-table7: install ## GENIUS Table 7: storage per item (decoding benchmark's bytes section) + the paper's numbers
	$(PY) -m genretr.bench decoding --skip qps,hf,constraint,faiss --corpus 1000,10000,100000 \
		--out bench_out/genius_table7 $(ARGS)
	@echo "Paper (GENIUS Table 7, $(GENIUS)/table7_storage.yaml): CLIP 3,072 bytes/item; GENIUS 98 bits = 12.25 bytes/item"

reproduce-genius-table9: install ## GENIUS Table 9 on shapes: beam size 1-50 (evaluation only), table + PNG
	rm -rf multirun/genius_table9
	$(SWEEP) experiment=genius_table9 hydra.sweep.dir=multirun/genius_table9 $(ARGS)
	$(REPORT) multirun/genius_table9 --reference $(GENIUS)/table9_mbeir.yaml $(GENIUS_COLS) \
		--out multirun/genius_table9/table.md --plot decoding.num_beams --png multirun/genius_table9/beam.png

reproduce-genius-table11: install ## GENIUS Table 11 on shapes: larger codebooks and codebooks shared across levels
	rm -rf multirun/genius_table11
	$(SWEEP) experiment=genius_table11 hydra.sweep.dir=multirun/genius_table11 $(ARGS)
	$(REPORT) multirun/genius_table11 --reference $(GENIUS)/table11_mbeir.yaml $(GENIUS_COLS) \
		--out multirun/genius_table11/table.md

# --- SSID tables on shapes (the users' `make reproduce-table1` is SSID's Table I). SSID's identifiers and
# rationales come from generator=keywords, the offline stand-in for an MLLM. Tables I and II reuse
# reproduce-grace-table1's models for GRACE's identifiers (run it first, or they are trained here).
SSID := experiments/ssid

reproduce-table1: install ## SSID Table I on shapes: numeric, string, semantic, structured and SSID identifiers (T5)
	rm -rf multirun/ssid_table1
	$(SWEEP) experiment=ssid_table1 hydra.sweep.dir=multirun/ssid_table1 $(ARGS)
	$(REPORT) multirun/ssid_table1 --reference $(SSID)/table1_flickr30k.yaml --out multirun/ssid_table1/table.md

reproduce-table2: install ## SSID Table II on shapes: SSID vs atomic and image tokenization (T5), SSID on tiny MLLMs
	rm -rf multirun/ssid_table2
	$(SWEEP) experiment=ssid_table2 hydra.sweep.dir=multirun/ssid_table2/t5 $(ARGS)
	$(SWEEP) experiment=ssid_table2_mllm hydra.sweep.dir=multirun/ssid_table2/mllm $(ARGS)
	$(REPORT) multirun/ssid_table2 --reference $(SSID)/table2_flickr30k.yaml --out multirun/ssid_table2/table.md

reproduce-table3: install ## SSID Table III on shapes: the rationale in training and inference, training only, neither
	rm -rf multirun/ssid_table3
	$(SWEEP) experiment=ssid_table3 hydra.sweep.dir=multirun/ssid_table3 $(ARGS)
	$(REPORT) multirun/ssid_table3 --reference $(SSID)/table3_flickr30k.yaml --out multirun/ssid_table3/table.md

reproduce-ssid-fewshot: install ## SSID Fig. 3 on shapes: fine-tuning on N samples, test identifiers unseen; table + PNG
	rm -rf multirun/ssid_fewshot
	$(SWEEP) experiment=ssid_fewshot hydra.sweep.dir=multirun/ssid_fewshot $(ARGS)
	$(REPORT) multirun/ssid_fewshot --reference $(SSID)/fig3_flickr30k.yaml --out multirun/ssid_fewshot/table.md \
		--plot train.limit --metrics R@1,R@5,R@10 --png multirun/ssid_fewshot/fewshot.png

DESCRIBER = $(PY) experiments/ssid/describer_oracle.py --seeds $(SEED_LIST) experiment=ssid_table1
reproduce-ssid-describer: install ## SSID vs semantic IDs under three describers of the images (README, SSID)
	$(DESCRIBER) --captioner identifier=semantic $(ARGS)
	$(DESCRIBER) --captioner identifier=semantic identifier.train_caption=generated $(ARGS)
	$(DESCRIBER) identifier=semantic $(ARGS)
	$(DESCRIBER) --captioner identifier=ssid $(ARGS)
	$(DESCRIBER) --captioner identifier=ssid identifier.describe=all $(ARGS)
	$(DESCRIBER) identifier=ssid $(ARGS)

reproduce-efficiency: install ## q/s vs number of candidates: embedding baseline and generative decoders (CSV + PNG)
	$(PY) -m genretr.bench decoding --shapes genius,cart,cart_fusion --skip hf,constraint,bytes --beams 30 \
		--batches 32 --out bench_out/efficiency $(ARGS)

clean: ## remove outputs (keeps .venv and the artifact cache)
	rm -rf outputs multirun

clean-cache: ## remove the artifact cache (.cache/genretr)
	rm -rf .cache/genretr

.PHONY: help install lock run test test-slow bench-decoding reproduce-smoke clean clean-cache reproduce-efficiency \
	reproduce-grace-table1 reproduce-grace-table2 reproduce-grace-beam reproduce-grace-table3 reproduce-grace-poolsize \
	reproduce-cart-table4 reproduce-cart-table5 reproduce-cart-table6 reproduce-cart-table7 reproduce-cart-table10 reproduce-cart-table11 reproduce-cart-vs-grace reproduce-cart-vs-grace-full reproduce-cart reproduce-genius-table1 reproduce-genius-table2 reproduce-genius-table3 reproduce-genius-table4 reproduce-genius-table5 reproduce-genius-table7 reproduce-genius-table9 reproduce-genius-table11 \
	reproduce-table1 reproduce-table2 reproduce-table3 reproduce-ssid-fewshot reproduce-ssid-describer
