# `make demo` and `make test` each work on a fresh machine: they create .venv and install into it.
# TORCH picks the torch build; the default is a CPU-friendly pin, e.g. `make test TORCH=torch` for the newest.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
# `make integration COMFYUI_SOURCE=<ComfyUI tarball or folder>`: the tests marked `comfyui` in a real ComfyUI,
# set up by scripts/setup_comfyui.sh in COMFYUI_HOME with its own environment (COMFYUI_TORCH).
COMFYUI_SOURCE ?=
COMFYUI_HOME ?= .comfyui
COMFYUI_TORCH ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: demo test lint bench integration clean

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

$(COMFYUI_HOME)/.ready: scripts/setup_comfyui.sh requirements.txt requirements-test.txt tests/integration/requirements.txt
	@test -n "$(COMFYUI_SOURCE)" || { echo "make integration: set COMFYUI_SOURCE to a ComfyUI tarball or folder"; exit 2; }
	COMFYUI_TORCH="$(COMFYUI_TORCH)" scripts/setup_comfyui.sh "$(COMFYUI_SOURCE)" $(COMFYUI_HOME)
	touch $@

integration: $(COMFYUI_HOME)/.ready
	COMFYUI_DIR=$(abspath $(COMFYUI_HOME))/ComfyUI $(abspath $(COMFYUI_HOME))/venv/bin/python -m pytest -q -rs -m comfyui $(PYTEST_ARGS)

bench: $(VENV)/.test
	$(PY) bench/bench_transformer.py
	$(PY) bench/bench_sampling.py
	$(PY) bench/bench_loading.py

clean:
	rm -rf $(VENV) demo_out $(COMFYUI_HOME)
