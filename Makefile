# Two entry points: `make demo` (install, then run the two-seed study) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= runs/two-seeds

.PHONY: install system browser demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install --upgrade pip >/dev/null

# CPU torch first, from its exact version, so no dependency pulls a CUDA build.
# Elsewhere, point pip at a CPU wheel index with TORCH_PIP_ARGS="--index-url URL".
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
install: $(BIN)/python system
	$(BIN)/pip install $(TORCH_PIP_ARGS) '$(TORCH_SPEC)'
	$(BIN)/pip install -e '.[test]'

# System packages, where we are root and apt exists (elsewhere these steps do nothing):
# Fashion-MNIST (without it lossprobe downloads the data on first use, or says how to get
# it) and, for the tests, headless Chromium with its driver for the report site's browser
# test (without them that test skips and says why).
apt_install = if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1)) \
	|| echo "apt-get install $(1) failed; continuing without it"; fi

system:
	@[ -d /usr/share/datasets/fashion-mnist ] || { $(call apt_install,dataset-fashion-mnist); }

browser:
	@{ command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || { $(call apt_install,chromium chromium-driver); }

demo: install
	$(BIN)/lossprobe study two-seeds --out $(OUT)
	@echo "report: $(OUT)/report.md"

test: install browser
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/two_seeds.py

clean:
	rm -rf $(VENV) runs .pytest_cache
