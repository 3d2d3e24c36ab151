"""Server configuration: one frozen dataclass built from CLI flags with environment fallbacks."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 5433
    upstream: str | None = None          # libpq URI; None means the embedded PostgreSQL
    data_dir: Path = field(default_factory=lambda: Path("pgml-data"))
    workers: int = 1
    tls_cert: str | None = None
    tls_key: str | None = None
    log_level: str = "info"
    log_format: str = "text"            # 'text' or 'json' (structured)
    model_cache_mb: int = 1024
    gpu: str = "auto"                   # auto | on | off
    gpu_min_batch: int = 20_000         # rows from which --gpu auto uses the GPU (inference/gpu.py: measure it)
    artifact_key: str | None = None     # hex HMAC key for model artifacts; None: kept in the upstream
    max_clients: int = 1000
    max_message_size: int = 0x3FFFFFFE  # PostgreSQL's own limit for a single message (PQ_LARGE_MESSAGE_LIMIT)
    startup_timeout: float = 60.0       # seconds a client may take to authenticate
    shutdown_timeout: float = 30.0      # seconds running statements get after SIGTERM
    embedded_port: int | None = None    # TCP port of the embedded upstream (None: pick a free one)
    dashboard: tuple[str, int] | None = ("127.0.0.1", 8000)   # web dashboard address; None: off
    monitor_sample: float = 0.01        # fraction of predicted rows binned for drift (0: monitoring off)
    monitor_flush_seconds: float = 60.0  # PGML_MONITOR_FLUSH_SECONDS: how often samples go to the upstream
    schedule_poll_seconds: float = 1.0  # PGML_SCHEDULE_POLL_SECONDS: how often the scheduler looks for due runs
    drift_check_seconds: float = 60.0   # PGML_DRIFT_CHECK_SECONDS: how often retrain_on_drift is checked


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def _rows(text) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a number of rows: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {value}")
    return value


def _dashboard(text: str) -> tuple[str, int] | None:
    """`HOST:PORT`, `[IPv6]:PORT`, `:PORT` or `off`."""
    if text.strip().lower() in ("off", "none", "no", "false", "0"):
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"--dashboard is HOST:PORT or off, not {text!r}")
    return (host.strip("[]") or "127.0.0.1", int(port))


def _fraction(text) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a fraction: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {value}")
    return value


def _seconds(name: str, default: float) -> float:
    text = _env(name)
    try:
        value = float(text) if text else default
    except ValueError:
        raise SystemExit(f"pgml-server: {name} must be a number of seconds, not {text!r}") from None
    if value <= 0:
        raise SystemExit(f"pgml-server: {name} must be > 0, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pgml-server",
        description="A PostgreSQL wire-protocol server that forwards SQL to an upstream PostgreSQL "
        "and answers pgml.* machine-learning calls itself.",
    )
    p.add_argument("--host", default=_env("PGML_HOST") or "127.0.0.1", help="address to listen on (PGML_HOST)")
    p.add_argument("--port", type=int, default=int(_env("PGML_PORT") or 5433), help="port to listen on (PGML_PORT)")
    p.add_argument(
        "--upstream",
        default=_env("PGML_UPSTREAM", "DATABASE_URL"),
        metavar="DSN",
        help="libpq URI of the upstream PostgreSQL (PGML_UPSTREAM or DATABASE_URL); "
        "absent: start an embedded PostgreSQL in --data-dir",
    )
    p.add_argument("--data-dir", default=_env("PGML_DATA_DIR") or "pgml-data",
                   help="data folder of the embedded PostgreSQL (PGML_DATA_DIR)")
    p.add_argument("--workers", type=int, default=int(_env("PGML_WORKERS") or 1),
                   help="worker processes sharing the port (SO_REUSEPORT)")
    p.add_argument("--tls-cert", default=_env("PGML_TLS_CERT"), help="PEM certificate for client TLS")
    p.add_argument("--tls-key", default=_env("PGML_TLS_KEY"), help="PEM private key for client TLS")
    p.add_argument("--log-level", default=_env("PGML_LOG_LEVEL") or "info",
                   choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default=_env("PGML_LOG_FORMAT") or "text", choices=["text", "json"])
    p.add_argument("--model-cache-mb", type=int, default=int(_env("PGML_MODEL_CACHE_MB") or 1024),
                   help="bound of the in-memory model cache in MiB")
    p.add_argument("--gpu", default=_env("PGML_GPU") or "auto", choices=["auto", "on", "off"],
                   help="CuPy inference: 'auto' for batches of at least --gpu-min-batch rows when a GPU "
                   "exists, 'on' for every batch, 'off' never (PGML_GPU)")
    p.add_argument("--gpu-min-batch", type=_rows, default=_env("PGML_GPU_MIN_BATCH") or 20_000,
                   metavar="ROWS", help="batch size from which --gpu auto uses the GPU; measure it on the "
                   "machine with a GPU (PGML_GPU_MIN_BATCH, default 20000: a guess)")
    p.add_argument("--artifact-key", default=_env("PGML_ARTIFACT_KEY"),
                   help="hex HMAC key signing model artifacts (default: generated once, kept in the upstream)")
    p.add_argument("--max-clients", type=int, default=int(_env("PGML_MAX_CLIENTS") or 1000))
    p.add_argument("--max-message-mb", type=float, default=float(_env("PGML_MAX_MESSAGE_MB") or 0),
                   help="largest client message in MiB; larger ones close the connection with 08P01 "
                   "(PGML_MAX_MESSAGE_MB; default 0: PostgreSQL's own limit, 1 GiB)")
    p.add_argument("--startup-timeout", type=float, default=float(_env("PGML_STARTUP_TIMEOUT") or 60),
                   help="seconds a client may take from connecting to authenticated (PGML_STARTUP_TIMEOUT)")
    p.add_argument("--dashboard", type=_dashboard, default=_env("PGML_DASHBOARD") or "127.0.0.1:8000",
                   metavar="HOST:PORT", help="address of the web dashboard, or 'off' (PGML_DASHBOARD, "
                   "default 127.0.0.1:8000)")
    p.add_argument("--monitor-sample", type=_fraction, default=_env("PGML_MONITOR_SAMPLE") or 0.01,
                   metavar="FRACTION", help="fraction of predicted rows binned for drift monitoring "
                   "(PGML_MONITOR_SAMPLE, default 0.01; 0 turns monitoring off)")
    p.add_argument("--embedded-port", type=int, default=None, help=argparse.SUPPRESS)
    return p


def from_args(argv: list[str] | None = None) -> Config:
    a = build_parser().parse_args(argv)
    if bool(a.tls_cert) != bool(a.tls_key):
        raise SystemExit("pgml-server: --tls-cert and --tls-key go together")
    return Config(
        host=a.host, port=a.port, upstream=a.upstream, data_dir=Path(a.data_dir), workers=max(1, a.workers),
        tls_cert=a.tls_cert, tls_key=a.tls_key, log_level=a.log_level, log_format=a.log_format,
        model_cache_mb=a.model_cache_mb, gpu=a.gpu, gpu_min_batch=a.gpu_min_batch, artifact_key=a.artifact_key,
        max_clients=a.max_clients,
        max_message_size=int(a.max_message_mb * (1 << 20)) if a.max_message_mb > 0 else 0x3FFFFFFE,
        startup_timeout=a.startup_timeout,
        embedded_port=a.embedded_port,
        dashboard=a.dashboard,
        monitor_sample=float(a.monitor_sample),
        monitor_flush_seconds=_seconds("PGML_MONITOR_FLUSH_SECONDS", 60.0),
        schedule_poll_seconds=_seconds("PGML_SCHEDULE_POLL_SECONDS", 1.0),
        drift_check_seconds=_seconds("PGML_DRIFT_CHECK_SECONDS", 60.0),
    )
