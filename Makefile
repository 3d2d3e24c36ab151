# The two commands of the README: `make run` and `make test`. Both create .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 5433
HOST ?= 127.0.0.1
PYTEST_ARGS ?=

.PHONY: install run test bench soak fuzz clean chromium

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/pgml-server --host $(HOST) --port $(PORT)

test: install chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The dashboard's browser tests drive Debian's chromium (a Playwright browser download is not
# used). Installed here when missing and apt-get is usable as root; otherwise those tests skip.
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium for the dashboard's browser tests (apt-get)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "apt-get could not install chromium: the browser tests will skip"; \
	  else \
	    echo "no /usr/bin/chromium and no root apt-get: the dashboard's browser tests will skip"; \
	  fi; \
	fi

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
