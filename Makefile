# Each target creates .venv itself when it is missing (or when pyproject.toml changed).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.shipslog-installed
TORCH  := torch==2.13.0

.PHONY: help venv demo test test-fast bench lint typecheck clean

help:
	@echo "make demo   - create $(VENV) if needed, run a training host, kill it, and watch it recover"
	@echo "make test   - create $(VENV) if needed and run the whole test suite"
	@echo "make bench  - create $(VENV) if needed and run the benchmarks"
	@echo "make lint / make typecheck - ruff and mypy"

venv: $(STAMP)

# torch is installed first, pinned: an open range with no torch installed
# would pull several GB of CUDA packages.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[gpu,test]"
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

lint: $(STAMP)
	$(PY) -m pip install --quiet ruff
	$(PY) -m ruff check journal engine recovery shipslog tools tests

typecheck: $(STAMP)
	$(PY) -m pip install --quiet mypy
	$(PY) -m mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .hypothesis
