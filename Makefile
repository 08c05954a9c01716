# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Both create .venv from python3.12 and install the project (editable) into it when pyproject.toml changes.
SHELL := /bin/bash
VENV := .venv
# python3.12 may be on PATH or only inside pyenv; take the first interpreter that really is 3.12.
PYTHON312 ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12; do \
	$$p -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1 && { echo $$p; break; }; done)
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test bench lint clean

$(STAMP): pyproject.toml
	@if [ -z "$(PYTHON312)" ]; then echo "error: python3.12 not found (install Python 3.12 or set PYTHON312=/path/to/python3.12)" >&2; exit 1; fi
	@test -x $(VENV)/bin/python || $(PYTHON312) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vst-vla demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest tests

bench: $(STAMP)
	@for b in bench/*.py; do echo "== $$b"; $(VENV)/bin/python $$b || exit 1; done

lint: $(STAMP)
	$(VENV)/bin/ruff check vst_vla spatial_tuning policies sim tests bench

clean:
	rm -rf outputs .pytest_cache
