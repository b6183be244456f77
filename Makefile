# Everything a fresh machine needs: `make demo` and `make test` create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.galparam-installed

.PHONY: demo test bench lint format clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m galparam.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_simulate.py
	$(BIN)/python benchmarks/bench_evaluate.py
	$(BIN)/python benchmarks/bench_train.py

lint: $(STAMP)
	$(BIN)/ruff format --check galparam tests benchmarks
	$(BIN)/ruff check galparam tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format galparam tests benchmarks
	$(BIN)/ruff check --fix galparam tests benchmarks

clean:
	rm -rf runs reports bench-results data/*.npz data/*.csv data/*.parts experiments/search/*-results
