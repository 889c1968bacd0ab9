# `make demo` and `make test` work on a fresh machine: they create .venv and install everything.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Extra pip arguments for the torch step, e.g. --index-url of a CPU wheel index on machines
# where the pin alone would fetch a CUDA build.
TORCH_PIP_ARGS ?=

.PHONY: setup demo test clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	# The CPU build by its exact pin first, so nothing below pulls CUDA packages.
	$(BIN)/pip install -q torch==2.13.0 $(TORCH_PIP_ARGS)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# The main job on the bundled default generator: export → int8 rewrites → QDQ int8 → check → report.
demo: setup
	$(BIN)/gencompress compress dcgan demo_out

test: setup
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) demo_out build *.egg-info
