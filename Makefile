# Thin wrappers: every target is one call into the library or its CLI.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/implicit-concept
STAMP := $(VENV)/.installed-stamp
RECIPE ?= icd-tiny
WORKERS ?= 2
JOBS ?= 2
DATA ?= data
TRACK ?= tiny

export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1

.PHONY: install dataset benchmark test test-fast clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

dataset: install
	$(CLI) build $(RECIPE) --out $(DATA)/$(RECIPE) --workers $(WORKERS)
	$(CLI) verify $(DATA)/$(RECIPE)
	$(CLI) show $(DATA)/$(RECIPE)/icd-mixed/test --contaminated --out $(DATA)/$(RECIPE)/preview.png

benchmark: install
	$(CLI) benchmark --track $(TRACK) --data $(DATA) --workers $(WORKERS) --jobs $(JOBS)

test: install
	$(PY) -m pytest -q -ra

test-fast: install
	$(PY) -m pytest -q -ra -m "not slow"

clean:
	rm -rf $(DATA) runs .pytest_cache
