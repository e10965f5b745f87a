# Two entry points: `make demo` (install, then run the two-seed study) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= runs/two-seeds

.PHONY: install data demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install --upgrade pip >/dev/null

# CPU torch first, from its exact version, so no dependency pulls a CUDA build.
# Elsewhere, point pip at a CPU wheel index with TORCH_PIP_ARGS="--index-url URL".
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
install: $(BIN)/python data
	$(BIN)/pip install $(TORCH_PIP_ARGS) '$(TORCH_SPEC)'
	$(BIN)/pip install -e '.[test]'

# Fashion-MNIST from Debian where we are root and apt exists; otherwise lossprobe
# downloads it on first use (or says how to get it).
data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || echo "apt install of dataset-fashion-mnist failed; lossprobe will try to download the data"; \
	fi

demo: install
	$(BIN)/lossprobe study two-seeds --out $(OUT)
	@echo "report: $(OUT)/report.md"

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/two_seeds.py

clean:
	rm -rf $(VENV) runs .pytest_cache
