# The two commands of the README: `make run` and `make test`. Both create .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 5433
HOST ?= 127.0.0.1
PYTEST_ARGS ?=
JDBC_JAR ?= /usr/share/java/postgresql.jar
NODE_CLIENT := tests/clients/node

.PHONY: install clients chromium run test bench soak fuzz clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml setup.py pgml_server/proxy/_relay.c
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/pgml-server --host $(HOST) --port $(PORT)

# The real clients that tests/test_jdbc.py and tests/test_node_pg.py run: pgJDBC (Debian's jar,
# when we are root with apt-get; `apt-get update` only if the install fails without it) and pg with
# pg-cursor (npm ci). Best effort and quiet: when an install fails those tests skip with the reason.
clients:
	-@if [ ! -e $(JDBC_JAR) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "make clients: apt-get install libpostgresql-jdbc-java"; \
	    export DEBIAN_FRONTEND=noninteractive; apt="apt-get -qq -o Acquire::Retries=1 -o Acquire::http::Timeout=30"; \
	    $$apt install -y libpostgresql-jdbc-java >/dev/null 2>&1 || \
	    { $$apt update >/dev/null 2>&1 && $$apt install -y libpostgresql-jdbc-java >/dev/null 2>&1; } || \
	    echo "make clients: libpostgresql-jdbc-java not installed (tests/test_jdbc.py will skip)"; \
	fi
	-@if [ ! -d $(NODE_CLIENT)/node_modules/pg-cursor ] && command -v npm >/dev/null; then \
	    echo "make clients: npm ci in $(NODE_CLIENT)"; \
	    (cd $(NODE_CLIENT) && npm ci --no-audit --no-fund --loglevel=error --fetch-retries=1 --fetch-timeout=30000 >/dev/null 2>&1) || \
	    { rm -rf $(NODE_CLIENT)/node_modules; echo "make clients: npm ci failed (tests/test_node_pg.py will skip)"; }; \
	fi

test: install clients chromium
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
