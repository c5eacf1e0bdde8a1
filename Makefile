# Thin wrappers: every target is one call into the library or its CLI.
PYTHON ?= python3
VENV ?= .venv
RECIPE ?= icd-tiny
WORKERS ?= 2
JOBS ?= 2
DATA ?= data
TRACK ?= tiny
# Your own image-text shards or folder in place of the recipe's source, and an SD folder for the paper track.
SOURCE ?=
PRETRAINED ?=
STAMP := $(VENV)/.installed-stamp

# A value as one shell word, whatever it holds (spaces, quotes): DATA='my data' stays one path.
quote = '$(subst ','\'',$(1))'
# An option with its value as one shell word, or nothing when the value is empty: $(call option,--source,$(SOURCE)).
option = $(if $(2),$(1) $(call quote,$(2)))
# A path as one make target, its spaces escaped: VENV='my venv' is one stamp, found installed.
space := $(subst ,, )
target = $(subst $(space),\$(space),$(1))
# Refuse an empty variable before any command: DATA= built into /icd-tiny, at the root of the disk, and
# VENV= made the current folder a venv, then ran pip as /bin/python, the system's.
nonempty = $(if $(strip $($(1))),,$(error $(1) is empty: name a folder))
PY := $(call quote,$(VENV)/bin/python)
CLI := $(call quote,$(VENV)/bin/implicit-concept)

export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1

.PHONY: install dataset benchmark test test-fast clean

install: $(call target,$(STAMP))

$(call target,$(STAMP)): setup.cfg pyproject.toml
	$(call nonempty,VENV)$(PYTHON) -m venv $(call quote,$(VENV))
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(call quote,$(STAMP))

# The dataset's folder is named after the recipe's name, not the path it was given by.
dataset: install
	$(call nonempty,DATA)out=$(call quote,$(DATA))/"$$($(CLI) recipe-name $(call quote,$(RECIPE)))" && \
	$(CLI) build $(call quote,$(RECIPE)) --out "$$out" --workers $(call quote,$(WORKERS)) $(call option,--source,$(SOURCE)) && \
	$(CLI) verify "$$out" && \
	$(CLI) show "$$out" --contaminated --out "$$out/preview.png"

benchmark: install
	$(CLI) benchmark --track $(call quote,$(TRACK)) --data $(call quote,$(DATA)) --workers $(call quote,$(WORKERS)) --jobs $(call quote,$(JOBS)) \
		$(call option,--source,$(SOURCE)) $(call option,--pretrained,$(PRETRAINED))

test: install
	$(PY) -m pytest -q -ra

test-fast: install
	$(PY) -m pytest -q -ra -m "not slow"

clean:
	rm -rf -- $(call quote,$(DATA)) runs .pytest_cache
