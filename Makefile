# The two commands of the README: `make run` and `make test`. Both create .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 5433
HOST ?= 127.0.0.1
PYTEST_ARGS ?=

.PHONY: install run test bench soak fuzz clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/pgml-server --host $(HOST) --port $(PORT)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/run_all.py

soak: install
	$(BIN)/python benchmarks/soak.py

# Coverage-guided fuzzing of protocol/ (atheris is optional: installed here, not by `make install`).
fuzz: install
	$(BIN)/python -m pip install --quiet atheris
	$(BIN)/python tests/fuzz/atheris_protocol.py -runs=200000 -max_len=512

clean:
	rm -rf $(VENV) pgml-data .pytest_cache
