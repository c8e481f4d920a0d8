# Each target creates .venv itself when it is missing (or when pyproject.toml changed).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.shipslog-installed
TORCH  := torch==2.13.0
# make lint / make typecheck install these (pinned: findings change between releases) when the
# venv lacks them or has other versions.
LINT_TOOLS := ruff==0.17.6
TYPE_TOOLS := mypy==2.4.1 types-psutil==7.2.2.20261111
LINT_DIRS  := journal engine recovery gpu shipslog tools tests

.PHONY: help venv demo test test-fast bench lint typecheck clean

help:
	@echo "make demo   - create $(VENV) if needed, run a training host, kill it, and watch it recover"
	@echo "make test   - create $(VENV) if needed and run the whole test suite"
	@echo "make bench  - create $(VENV) if needed and run the benchmarks"
	@echo "make lint   - ruff on $(LINT_DIRS) (installs ruff into $(VENV) if needed)"
	@echo "make typecheck - mypy --strict on every shipslog package (installs mypy into $(VENV) if needed)"

venv: $(STAMP)

# A bare venv, for lint: ruff needs neither the project nor its dependencies.
$(PY):
	$(PYTHON) -m venv $(VENV)

# $(call ensure,pkg==version ...): pip install the packages unless exactly those versions are there.
ensure = $(PY) -c 'import sys, importlib.metadata as m; sys.exit(any(m.version(n) != v for n, _, v in (a.partition("==") for a in sys.argv[1:])))' $(1) 2>/dev/null \
	|| $(PY) -m pip install --quiet --disable-pip-version-check $(1)

# torch is installed first, pinned: an open range with no torch installed
# would pull several GB of CUDA packages.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[gpu,lightning,hf,accelerate,test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m shipslog demo

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

bench: $(STAMP)
	$(PY) -m shipslog bench journal
	$(PY) -m shipslog bench engine

lint: | $(PY)
	@$(call ensure,$(LINT_TOOLS))
	$(PY) -m ruff check $(LINT_DIRS)

# mypy needs the dependencies installed ($(STAMP)) to check the calls into them.
# .ci/typecheck.py lays the packages out as installed (build/typecheck/, made anew each run).
typecheck: $(STAMP)
	@$(call ensure,$(TYPE_TOOLS))
	$(PY) .ci/typecheck.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .hypothesis
