# Two self-contained set-up commands (README): each creates .venv/ if missing, installs, runs.
#   make demo   - the pipeline on the bundled demo corpus
#   make test   - the test suite (installs the dev and ray extras)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check
# Machines without an NVIDIA driver get the CPU build of torch (a plain `torch` would pull a
# multi-GB CUDA build); pyproject.toml keeps `torch>=2.4` so GPU machines get CUDA wheels.
CPU_TORCH ?= torch==2.13.0
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)

.PHONY: demo test lint gpu-install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch: | $(PY)
	$(if $(HAS_GPU),@echo "NVIDIA GPU found: torch comes from the package install",$(PIP) $(CPU_TORCH))
	@touch $@

$(VENV)/.base: pyproject.toml $(VENV)/.torch
	$(PIP) -e .
	@touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.torch
	$(PIP) -e '.[dev,ray]'
	@touch $@ $(VENV)/.base

demo: $(VENV)/.base
	$(VENV)/bin/gristmill demo

test: $(VENV)/.dev
	$(VENV)/bin/python -m pytest -q

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check src tests benchmarks scripts

# GPU machines: faiss-gpu replaces faiss-cpu (both install the module `faiss`; keep only one).
gpu-install: $(VENV)/.dev
	$(PIP) -e '.[gpu,dev,ray]'
	$(PY) -m pip uninstall -y faiss-cpu faiss-gpu
	$(PIP) --no-deps --force-reinstall 'faiss-gpu>=1.14.3'
	$(PY) -c "import faiss; print('faiss', faiss.__version__, 'GPUs:', faiss.get_num_gpus())"

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
