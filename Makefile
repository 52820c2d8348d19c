# distllm: the two commands a newcomer runs.
#   make demo   set up, then run the main job end to end on the built-in tiny model
#   make test   set up, then run the test suite
# Setup is idempotent and fast the second time: .venv is created once, torch is pinned to the local
# CPU wheel when no torch is present, and the package (with its C++ kernels) is rebuilt only when its
# build inputs change.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION := 2.13.0
BUILD_INPUTS := setup.py pyproject.toml CMakeLists.txt $(shell find csrc -type f 2>/dev/null)
STAMP := $(VENV)/.distllm-installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip "setuptools>=64" wheel

$(STAMP): $(PY) $(BUILD_INPUTS)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet torch==$(TORCH_VERSION)
	$(PIP) install --quiet cmake ninja
	$(PIP) install --quiet --no-build-isolation -e ".[dev]"
	@touch $(STAMP)

demo: setup
	$(PY) -m distllm demo

test: setup
	$(PY) -m pytest -q -m "not gpu and not bench"

lint: setup
	$(PY) -m ruff check distllm simdist evaluation dataset tests

bench: setup
	$(PY) evaluation/bench_offline.py

clean:
	rm -rf build $(VENV) *.egg-info
