"""Forwarding benchmark: pgbench select-only straight to the upstream, through PgBouncer (session
mode) and through pgml-server (--workers 1 and 2), all in one run on the same machine.

Every (protocol, clients) cell runs the setups back to back, so machine noise hits them alike;
the script prints TPS and the ratios against the direct run and against PgBouncer.
Goals: issue 2, 1 client ≥ 0.85× direct; issue 11, every cell ≥ PgBouncer's TPS with the
default worker count (1), and proxy CPU per transaction ≤ PgBouncer's.

`--relays native,python` measures each pgml-server twice: relaying plain sessions in the
compiled relay core (the default) and in Python (PGML_NATIVE_RELAY=0), the A/B of issue 11.

Usage: python benchmarks/forwarding.py [--seconds 12] [--scale 10] [--upstream DSN]
       [--clients 1,8] [--protocols simple,prepared] [--rounds 1] [--workers 1,2]
       [--relays native,python]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

from common import describe_machine, load_average
from pgml_server.embedded import EmbeddedPostgres
from tests.fix_servers import ServerProcess, free_port, wait_port

GOAL_1 = 0.85       # 1 client: pgml-server ≥ 0.85× direct (issue 2)
GOAL_BOUNCER = 1.0  # every cell: pgml-server (default workers, native relay) ≥ PgBouncer (issue 11)


def find_program(name: str, extra: list[Path] = ()) -> str | None:
    for folder in extra:
        if (folder / name).exists():
            return str(folder / name)
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    for candidate in (Path("/usr/sbin") / name, Path("/usr/local/sbin") / name):
        if candidate.exists():
            return str(candidate)
    return None


class PgBouncer:
    """PgBouncer in session mode with its own config in a temp dir, run as a non-root user."""

    def __init__(self, binary: str, host: str, port: int, user: str, dbname: str, tmp: Path,
                 pool_size: int = 40) -> None:
        self.port = free_port()
        self.dir = tmp / "pgbouncer"
        self.dir.mkdir()
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(f"""[databases]
{dbname} = host={host} port={port} dbname={dbname} user={user}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = any
pool_mode = session
max_client_conn = 200
default_pool_size = {pool_size}
logfile = {self.dir / 'pgbouncer.log'}
pidfile = {self.dir / 'pgbouncer.pid'}
""")
        kwargs: dict = {}
        if os.geteuid() == 0:            # pgbouncer refuses to run as root
            entry = _unprivileged_user()
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
            os.chown(ini, entry.pw_uid, entry.pw_gid)
            kwargs = dict(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])
        self.proc = subprocess.Popen([binary, str(ini)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     **kwargs)
        try:
            wait_port(self.port, None, timeout=15)
        except TimeoutError:
            self.proc.kill()
            raise RuntimeError(f"pgbouncer did not start: {self.proc.stderr.read().decode(errors='replace')}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _unprivileged_user() -> pwd.struct_passwd:
    for name in ("pgserver", "postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("no unprivileged user to run pgbouncer as")


def pgbench(binary: str, host: str, port: int, user: str, dbname: str, *args: str,
            timeout: float | None = None) -> str:
    env = {**os.environ, "PGHOST": host, "PGPORT": str(port), "PGUSER": user, "PGDATABASE": dbname}
    proc = subprocess.run([binary, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench {' '.join(args)} failed on port {port}:\n{proc.stderr[-2000:]}")
    return proc.stdout


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (pgml-server --workers N forks its workers)."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (Linux /proc), 0 where unreadable."""
    total = 0.0
    for p in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def run_select_only(binary: str, port: int, user: str, dbname: str, clients: int, protocol: str,
                    seconds: float) -> float:
    threads = min(clients, 2)
    out = pgbench(binary, "127.0.0.1", port, user, dbname, "-n", "-S", "-M", protocol, "-c", str(clients),
                  "-j", str(threads), "-T", str(int(seconds)), timeout=seconds + 120)
    found = re.search(r"tps = ([0-9.]+) \((?:without initial connection time|excluding connections establishing)",
                      out)
    if not found:
        raise RuntimeError(f"no TPS in pgbench output:\n{out}")
    return float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", help="libpq URI of an existing upstream (default: an embedded one)")
    parser.add_argument("--seconds", type=float, default=12)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--protocols", default="simple,prepared")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every cell; the best TPS of each is kept")
    parser.add_argument("--workers", default="1,2", help="pgml-server --workers values to measure")
    parser.add_argument("--relays", default="native,python",
                        help="native: the compiled relay core (default); python: PGML_NATIVE_RELAY=0")
    args = parser.parse_args()
    clients_list = [int(c) for c in args.clients.split(",")]
    protocols = args.protocols.split(",")

    with tempfile.TemporaryDirectory(prefix="pgml-fwd-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o755)
        if args.upstream:
            dsn = args.upstream
        else:
            pg = EmbeddedPostgres(tmp / "data", fast=True)
            pg.start()
            stack.callback(pg.stop)
            dsn = pg.dsn
        url = urlparse(dsn)
        host, port = url.hostname or "127.0.0.1", url.port or 5432
        user, dbname = url.username or "postgres", (url.path or "/postgres").lstrip("/") or "postgres"
        if url.password:
            os.environ["PGPASSWORD"] = url.password
        bench_bin = find_program("pgbench")
        if bench_bin is None:
            raise SystemExit("pgbench not found (install postgresql-client)")

        t0 = time.perf_counter()
        pgbench(bench_bin, host, port, user, dbname, "-i", "-q", "-s", str(args.scale))
        print(f"pgbench -i -s {args.scale}: {time.perf_counter() - t0:.1f} s")

        setups: dict[str, int] = {"direct": port}
        proxies: dict[str, int] = {}          # setup name → pid of the proxy process (tree)
        bouncer_bin = find_program("pgbouncer")
        missing_bouncer = None
        if bouncer_bin is None:
            missing_bouncer = "pgbouncer is not installed (apt-get install pgbouncer)"
        else:
            try:
                bouncer = PgBouncer(bouncer_bin, host, port, user, dbname, tmp)
                stack.callback(bouncer.stop)
                setups["pgbouncer"] = bouncer.port
                proxies["pgbouncer"] = bouncer.proc.pid
            except Exception as exc:
                missing_bouncer = f"pgbouncer did not start: {exc}"
        for workers in [int(w) for w in args.workers.split(",") if w]:
            for relay in args.relays.split(","):
                name = f"pgml-server w{workers}" + (" py" if relay == "python" else "")
                env = {"PGML_NATIVE_RELAY": "0"} if relay == "python" else {}
                srv = ServerProcess(dsn, "--workers", str(workers), "--log-level", "warning",
                                    log_path=tmp / f"server-w{workers}-{relay}.log", env=env)
                stack.callback(srv.stop)
                setups[name] = srv.port
                proxies[name] = srv.proc.pid
        time.sleep(1.0)   # let the workers finish their start-up services

        # warm every path (connections, caches) once
        for name, p in setups.items():
            run_select_only(bench_bin, p, user, dbname, 2, "simple", 2)

        print(f"machine: {describe_machine()}; load average before: {load_average()}")
        if missing_bouncer:
            print(f"PgBouncer anchor MISSING: {missing_bouncer}")
        results: dict[tuple[str, int], dict[str, float]] = {}
        for protocol in protocols:
            for clients in clients_list:
                cell: dict[str, float] = {}
                cpu: dict[str, float] = {}
                for _ in range(args.rounds):
                    for name, p in setups.items():
                        pids = process_tree(proxies[name]) if name in proxies else []
                        c0 = cpu_seconds(pids)
                        tps = run_select_only(bench_bin, p, user, dbname, clients, protocol, args.seconds)
                        if pids:   # the proxy's own CPU per transaction: a cost, less noisy than TPS
                            per_tx = (cpu_seconds(pids) - c0) / (tps * int(args.seconds))
                            cpu[name] = min(cpu.get(name, per_tx), per_tx)
                        cell[name] = max(cell.get(name, 0.0), tps)
                results[(protocol, clients)] = cell
                report_cell(protocol, clients, cell, cpu, missing_bouncer)
        print(f"load average after: {load_average()}")
        print()
        print("summary (ratios of the default setup, pgml-server w1 with its default relay; goals: "
              "1 client ≥ 0.85× direct, every cell ≥ 1.0× PgBouncer)")
        for (protocol, clients), cell in results.items():
            name = "pgml-server w1" if "pgml-server w1" in cell else next(
                (n for n in cell if n.startswith("pgml")), None)
            if name is None:
                continue
            vs_direct = cell[name] / cell["direct"]
            line = f"  {protocol:8s} {clients:2d} clients: {name}: {vs_direct:.2f}× direct"
            if clients == 1:
                line += f" (goal ≥ {GOAL_1}×: {'met' if vs_direct >= GOAL_1 else 'NOT met'})"
            if "pgbouncer" in cell:
                vs_bouncer = cell[name] / cell["pgbouncer"]
                line += (f", {vs_bouncer:.2f}× PgBouncer (goal ≥ {GOAL_BOUNCER}×: "
                         f"{'met' if vs_bouncer >= GOAL_BOUNCER else 'NOT met'})")
            else:
                line += ", PgBouncer anchor missing: cannot be judged"
            print(line)


def report_cell(protocol: str, clients: int, cell: dict[str, float], cpu: dict[str, float],
                missing_bouncer: str | None) -> None:
    print(f"\npgbench -S -M {protocol}, {clients} client(s)")
    direct = cell["direct"]
    bouncer = cell.get("pgbouncer")
    for name, tps in cell.items():
        line = f"  {name:18s} {tps:10.0f} tps   {tps / direct:5.2f}× direct"
        if bouncer:
            line += f"   {tps / bouncer:5.2f}× PgBouncer"
        if name in cpu:
            line += f"   proxy CPU {cpu[name] * 1e6:5.1f} µs/tx"
        print(line)
    if bouncer is None:
        print(f"  pgbouncer          (missing: {missing_bouncer})")


if __name__ == "__main__":
    main()
