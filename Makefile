# The two commands that matter on a fresh machine (README): `make run` and `make test`.
# Both create .venv with pinned versions on first use (conf/pip-constraints.txt) and never reinstall after that
# unless setup.cfg, pyproject.toml or the pins change.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.acme-installed
CONSTRAINTS := conf/pip-constraints.txt
OUT ?= $(CURDIR)/outputs/default
RUN_ARGS ?=

.PHONY: install run test lint clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch/torchvision first, exactly these builds (PyPI's torchvision needs the matching torch, docs/operations.md, Install)
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m experiments.launch --out "$(OUT)" $(RUN_ARGS)

test: $(STAMP)
	$(VENV)/bin/pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf outputs .pytest_cache .ruff_cache *.egg-info
