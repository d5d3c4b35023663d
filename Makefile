# genretr — `make help` lists the targets. Every target creates .venv and installs on first use.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch (a local wheel on these machines; a bare `torch` would pull a multi-GB CUDA build).
TORCH_SPEC ?= torch==2.13.0
ARGS ?=

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-22s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	@touch $@

install: $(VENV)/.installed ## create .venv and install genretr with its dependencies

run: install ## the default experiment: shapes, embedding baseline + string IDs with a T5 decoder
	$(PY) -m genretr.run method=embedding $(ARGS)
	$(PY) -m genretr.run $(ARGS)

test: install ## the test suite (no network, < 10 min on 2 cores)
	$(PY) -m pytest -q -m "not slow" $(ARGS)

test-slow: install ## the slow tests too
	$(PY) -m pytest -q $(ARGS)

bench-decoding: install ## the decoding benchmark (add ARGS=--quick for a 3-minute subset); CSV + PNG in bench_out/
	$(PY) -m genretr.bench decoding $(ARGS)

reproduce-smoke: install ## a 2x2 multirun on shapes (encoder x method) and its table
	$(PY) -m genretr.run -m experiment=smoke hydra.sweep.dir=multirun/smoke $(ARGS)
	$(PY) -m genretr.report multirun/smoke

# Paper tables on shapes: a Hydra multirun, then our table beside the paper's numbers (genretr.report).
# Every stage is cached (.cache/genretr), so tables that share models reuse them; a killed target resumes.
REPORT := $(PY) -m genretr.report
GRACE := experiments/grace

reproduce-grace-table1: install ## GRACE Table 1 on shapes: every identifier type + the embedding baseline
	$(PY) -m genretr.run -m experiment=grace_table1 hydra.sweep.dir=multirun/grace_table1 $(ARGS)
	$(PY) -m genretr.run method=embedding progress=false hydra.run.dir=multirun/grace_table1/embedding $(ARGS)
	$(REPORT) multirun/grace_table1 --reference $(GRACE)/table1_flickr30k.yaml --out multirun/grace_table1/table.md

reproduce-grace-table2: install ## GRACE Table 2 on shapes: w/o learning to memorize, w/o constrained generation
	$(PY) -m genretr.run -m experiment=grace_table2 hydra.sweep.dir=multirun/grace_table2 $(ARGS)
	$(REPORT) multirun/grace_table2 --reference $(GRACE)/table2_flickr30k.yaml --out multirun/grace_table2/table.md

reproduce-grace-beam: install ## GRACE Appendix B on shapes: beam size sweep, table + PNG
	$(PY) -m genretr.run -m experiment=grace_beam hydra.sweep.dir=multirun/grace_beam $(ARGS)
	$(REPORT) multirun/grace_beam --out multirun/grace_beam/table.md --plot decoding.num_beams \
		--series identifier --metrics R@1,R@10 --png multirun/grace_beam/beam.png

reproduce-grace-table3: install ## GRACE Table 3 on shapes: image tokenization beside structured and atomic
	$(PY) -m genretr.run -m experiment=grace_table3 hydra.sweep.dir=multirun/grace_table3 $(ARGS)
	$(REPORT) multirun/grace_table3 --reference $(GRACE)/table3_flickr30k.yaml --out multirun/grace_table3/table.md

reproduce-grace-poolsize: install ## GRACE: identifiers as the test pool grows (200, 500, 2,000 images), table + PNG
	$(PY) -m genretr.run -m experiment=grace_poolsize hydra.sweep.dir=multirun/grace_poolsize $(ARGS)
	$(REPORT) multirun/grace_poolsize --out multirun/grace_poolsize/table.md --plot dataset.splits.test \
		--series identifier --metrics R@1,R@10 --png multirun/grace_poolsize/poolsize.png

reproduce-efficiency: install ## q/s vs number of candidates: embedding baseline and generative decoders (CSV + PNG)
	$(PY) -m genretr.bench decoding --shapes genius,cart,cart_fusion --skip hf,constraint,bytes --beams 30 \
		--batches 32 --out bench_out/efficiency $(ARGS)

clean: ## remove outputs (keeps .venv and the artifact cache)
	rm -rf outputs multirun

clean-cache: ## remove the artifact cache (.cache/genretr)
	rm -rf .cache/genretr

.PHONY: help install run test test-slow bench-decoding reproduce-smoke clean clean-cache reproduce-efficiency \
	reproduce-grace-table1 reproduce-grace-table2 reproduce-grace-beam reproduce-grace-table3 reproduce-grace-poolsize
