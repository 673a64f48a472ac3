# modstream: `make demo` runs the pipeline on the embedded defaults, `make test` runs the tests.
# Both need nothing but Python 3.11+: they create .venv and install into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test unit lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/modstream --log-level WARNING demo

test: $(STAMP)
	$(BIN)/python -m pytest

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

lint: $(STAMP)
	$(BIN)/ruff check pipeline tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/codec.py
	$(BIN)/python bench/matching.py
	$(BIN)/python bench/hashing.py
	$(BIN)/python bench/classify.py
	$(BIN)/python bench/decide.py
	$(BIN)/python bench/live.py
	$(BIN)/python bench/exchange.py
	$(BIN)/python bench/retro.py
	$(BIN)/python bench/flood.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
