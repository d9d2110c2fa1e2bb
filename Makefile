# Two commands do everything on a fresh machine:
#   make demo   - set up .venv, then fine-tune a tiny Sa2VA on the bundled CHASE_DB1 sample (CPU)
#   make test   - set up .venv, then ruff + the test suite (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint
setup:
	bash tools/setup.sh

demo: setup
	$(PY) tools/demo.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q
