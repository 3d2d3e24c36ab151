"""The `pgml-server` console script."""
from __future__ import annotations

import logging
import sys

from . import logs
from .config import Config, from_args
from .server import serve

log = logging.getLogger("pgml_server")


def main(argv: list[str] | None = None) -> int:
    config = from_args(argv)
    logs.setup(config.log_level, config.log_format)
    embedded = None
    dsn = config.upstream
    if dsn is None:
        from .embedded import EmbeddedPostgres
        embedded = EmbeddedPostgres(config.data_dir, port=config.embedded_port)
        embedded.start()
        dsn = embedded.dsn
        log.info("embedded PostgreSQL running in %s (%s)", config.data_dir, dsn)
    _announce(config)
    try:
        serve(config, dsn)
    except KeyboardInterrupt:
        pass
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def _announce(config: Config) -> None:
    host = config.host if config.host not in ("0.0.0.0", "::") else "127.0.0.1"
    print(f"pgml-server listening on {config.host}:{config.port}\n"
          f"  connect with: psql -h {host} -p {config.port} -U postgres\n"
          f"  or the DSN:   postgresql://postgres@{host}:{config.port}/postgres", file=sys.stderr, flush=True)
    if config.dashboard is not None:
        d_host, d_port = config.dashboard
        d_host = "127.0.0.1" if d_host in ("0.0.0.0", "::", "") else d_host
        d_host = f"[{d_host}]" if ":" in d_host else d_host
        scheme = "https" if config.tls_cert else "http"
        print(f"  dashboard:    {scheme}://{d_host}:{d_port}/ (log in with a PostgreSQL role)",
              file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
