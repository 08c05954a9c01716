# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Both create .venv from python3.12 and install the project (editable) into it when pyproject.toml changes.
SHELL := /bin/bash
VENV := .venv
# python3.12 may be on PATH or only inside pyenv; take the first interpreter that really is 3.12.
PYTHON312 ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12; do \
	$$p -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1 && { echo $$p; break; }; done)
STAMP := $(VENV)/.installed
# libero: the LIBERO simulator and its scene assets (~40 s, ~1.5 GB installed); EXTRAS=dev skips it and the
# LIBERO simulator tests skip with the reason.
EXTRAS ?= dev,libero
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl
export TOKENIZERS_PARALLELISM := false

.PHONY: install robot-venv demo test bench lint clean

$(STAMP): pyproject.toml
	@if [ -z "$(PYTHON312)" ]; then echo "error: python3.12 not found (install Python 3.12 or set PYTHON312=/path/to/python3.12)" >&2; exit 1; fi
	@test -x $(VENV)/bin/python || $(PYTHON312) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[$(EXTRAS)]'
	@touch $(STAMP)

install: $(STAMP)

# The robot side of the policy server: openpi-client (numpy < 2) in its own small venv, as a robot would run it.
ROBOT_VENV := .venv-robot
ROBOT_STAMP := $(ROBOT_VENV)/.installed
$(ROBOT_STAMP):
	@if [ -z "$(PYTHON312)" ]; then echo "error: python3.12 not found (install Python 3.12 or set PYTHON312=/path/to/python3.12)" >&2; exit 1; fi
	@test -x $(ROBOT_VENV)/bin/python || $(PYTHON312) -m venv $(ROBOT_VENV)
	$(ROBOT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(ROBOT_VENV)/bin/python -m pip install --quiet 'openpi-client==0.1.2' 'numpy<2' 'msgpack>=1.0.5' 'websockets>=11' 'dm-tree>=0.1.8' 'typing-extensions>=4'
	@touch $(ROBOT_STAMP)

robot-venv: $(ROBOT_STAMP)

# The main job on the embedded default. Rerunning resumes: finished stages are skipped (rm -rf outputs/demo to redo).
DEMO_DIR ?= outputs/demo
demo: $(STAMP)
	$(VENV)/bin/vst-vla pipeline experiment=tiny output_dir=$(DEMO_DIR)
	@echo "report: $(DEMO_DIR)/report.md (and report.html)"

# Lint first (seconds): CI runs `make test`, so a ruff finding fails CI as a failing test does.
test: $(STAMP) $(ROBOT_STAMP)
	$(VENV)/bin/ruff check vst_vla spatial_tuning policies sim tests bench
	$(VENV)/bin/python -m pytest tests

bench: $(STAMP)
	@for b in bench/*.py; do echo "== $$b"; $(VENV)/bin/python $$b || exit 1; done

lint: $(STAMP)
	$(VENV)/bin/ruff check vst_vla spatial_tuning policies sim tests bench

clean:
	rm -rf outputs .pytest_cache
