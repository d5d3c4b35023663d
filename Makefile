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

clean: ## remove outputs (keeps .venv and the artifact cache)
	rm -rf outputs multirun

clean-cache: ## remove the artifact cache (.cache/genretr)
	rm -rf .cache/genretr

.PHONY: help install run test test-slow bench-decoding reproduce-smoke clean clean-cache
