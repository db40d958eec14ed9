# fffcpu developer commands (GNU make).
#
#   make test     # creates .venv, installs fffcpu[test], runs pytest
#   make demo     # creates .venv, installs fffcpu[data], runs the demo
#
# Installs are tracked by stamp files inside the venv: a re-run is fast, and
# editing pyproject.toml reinstalls.

VENV ?= .venv
PYTHON ?= python3
PYTEST_ARGS ?=

VENV_PY := $(VENV)/bin/python
PIP := $(VENV_PY) -m pip
PIP_INSTALL := $(PIP) install -q --disable-pip-version-check

# Cross-check packages (not in pyproject: torch comes from the local wheel dir).
TORCH_VERSION ?= 2.13.0
FASTFEEDFORWARD_VERSION ?= 0.2.1

.DEFAULT_GOAL := help
.PHONY: help venv demo test bench reproduce reproduce-quick lab torch clean

help:
	@echo "fffcpu make targets:"
	@echo "  make demo    install fffcpu[data] into $(VENV) and run 'python -m fffcpu demo'"
	@echo "  make test    install fffcpu[test] into $(VENV) and run pytest (PYTEST_ARGS=... to pass options)"
	@echo "  make bench   install fffcpu[test] into $(VENV) and run the benchmarks (python -m benchmarks)"
	@echo "  make reproduce  install fffcpu[data,viz] and rerun the paper reproduction (docs/reproduction.md, 6-8 min on 2 cores)"
	@echo "  make reproduce-quick  the reduced reproduction (< 3 min) into build/reproduction-quick/"
	@echo "  make lab     install fffcpu[notebooks] into $(VENV) and start JupyterLab on notebooks/"
	@echo "  make torch   add torch==$(TORCH_VERSION) and fastfeedforward==$(FASTFEEDFORWARD_VERSION) for the cross-check tests"
	@echo "  make venv    create the virtual environment $(VENV) only"
	@echo "  make clean   remove $(VENV) and caches (keeps data)"
	@echo "  make help    show this list"

# --- virtual environment -------------------------------------------------

$(VENV_PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip

venv: $(VENV_PY)

# $(VENV)/.stamp-<extra>: fffcpu installed in editable mode with that extra.
$(VENV)/.stamp-%: pyproject.toml | $(VENV_PY)
	$(PIP_INSTALL) -e ".[$*]"
	@touch $@

$(VENV)/.stamp-torch: | $(VENV_PY)
	$(PIP_INSTALL) torch==$(TORCH_VERSION)
	$(PIP_INSTALL) --no-deps fastfeedforward==$(FASTFEEDFORWARD_VERSION)
	@touch $@

# --- targets --------------------------------------------------------------

demo: $(VENV)/.stamp-data
	$(VENV_PY) -m fffcpu demo

test: $(VENV)/.stamp-test
	$(VENV_PY) -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.stamp-test
	$(VENV_PY) -m benchmarks

# Table 1 of arXiv 2308.14711 on MNIST-5k and digits, and the overfragmentation study (--quick: < 3 min).
reproduce: $(VENV)/.stamp-data $(VENV)/.stamp-viz
	$(VENV_PY) -m benchmarks.accuracy --out docs/reproduction.md

# The reduced protocol (1 seed, fewer epochs), written outside docs/ so that the published document stays intact.
QUICK_OUT ?= build/reproduction-quick
reproduce-quick: $(VENV)/.stamp-data $(VENV)/.stamp-viz
	mkdir -p $(QUICK_OUT)
	$(VENV_PY) -m benchmarks.accuracy --quick --out $(QUICK_OUT)/reproduction.md

lab: $(VENV)/.stamp-notebooks
	$(VENV)/bin/jupyter lab notebooks/

torch: $(VENV)/.stamp-torch

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist *.egg-info
	find . -path ./.git -prune -o -type d \( -name __pycache__ -o -name .ipynb_checkpoints \) -prune -exec rm -rf {} +
