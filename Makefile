# `make demo` and `make test` each work on a fresh machine: they create .venv and install into it.
# TORCH picks the torch build; the default is a CPU-friendly pin, e.g. `make test TORCH=torch` for the newest.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: demo test lint bench clean

$(VENV)/.core: requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" -r requirements.txt
	touch $@

$(VENV)/.test: $(VENV)/.core requirements-test.txt
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

demo: $(VENV)/.core
	$(PY) -m lumina_core demo --out demo_out

lint: $(VENV)/.test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	$(PY) -m pytest -q

bench: $(VENV)/.test
	$(PY) bench/bench_transformer.py
	$(PY) bench/bench_sampling.py
	$(PY) bench/bench_loading.py

clean:
	rm -rf $(VENV) demo_out
