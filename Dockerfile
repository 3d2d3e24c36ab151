# pgml-server in front of the PostgreSQL named by $DATABASE_URL (see docker-compose.yml).
# Without DATABASE_URL it starts its embedded PostgreSQL in /var/lib/pgml (a volume).
FROM python:3.11-slim

# libgomp1: OpenMP runtime that LightGBM and XGBoost load; gcc + libc6-dev: the compiler that
# turns deployed tree models into native code at load (ml/inference/compiled.py) and builds the
# compiled relay core at install (setup.py, pgml_server/proxy/_relay.c).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY protocol ./protocol
COPY pgml_server ./pgml_server
RUN pip install --no-cache-dir '.[compiled]' && rm -rf /src

# PostgreSQL (embedded mode) refuses to run as root; the server needs no privileges either.
RUN useradd --create-home --uid 10001 pgml && install -d -o pgml -g pgml /var/lib/pgml
USER pgml
WORKDIR /home/pgml
# The dashboard listens on every interface inside the container (127.0.0.1 would be unreachable).
ENV PGML_DATA_DIR=/var/lib/pgml/data \
    PGML_DASHBOARD=0.0.0.0:8000 \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/pgml"]
EXPOSE 5433 8000

# exec: the server gets SIGTERM itself and shuts down cleanly; --upstream only when one is set.
CMD ["sh", "-c", "exec pgml-server --host 0.0.0.0 --port 5433 ${DATABASE_URL:+--upstream \"$DATABASE_URL\"}"]
