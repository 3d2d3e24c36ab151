"""psql against pgml-server: a script's whole output is the same as straight against the upstream."""
from __future__ import annotations

import subprocess
from pathlib import Path

from pgml_server import __version__

SCRIPT = Path(__file__).parent / "data" / "psql_script.sql"


def run_psql(bin_dir: Path, dsn: str, workdir: Path, *args: str) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run([str(bin_dir / "psql"), "-X", "-v", "ON_ERROR_STOP=0", "-d", dsn, *args],
                          capture_output=True, text=True, timeout=60, cwd=workdir,
                          env={"PGAPPNAME": "psql-test", "LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"})


def test_script_output_matches_the_upstream(upstream, server, tmp_path):
    direct = run_psql(upstream.bin_dir, upstream.dsn, tmp_path / "direct", "-f", str(SCRIPT))
    relayed = run_psql(upstream.bin_dir, server.dsn(), tmp_path / "relayed", "-f", str(SCRIPT))
    assert direct.returncode == 0, direct.stderr
    # The script really exercises what it claims: errors, notices, COPY and unicode all appear.
    for expected in ("division by zero", 'relation "no_such_table" does not exist', "NOTICE:  hello from plpgsql",
                     "WARNING:  careful: 4 rows", "current transaction is aborted"):
        assert expected in direct.stderr
    for expected in ("李雷", "emoji 🐘", "<null>", "after_rollback", "COPY 2", "11,eleven", "long_value"):
        assert expected in direct.stdout
    assert relayed.stdout == direct.stdout
    assert relayed.stderr == direct.stderr
    assert relayed.returncode == direct.returncode
    for name in ("people.tsv", "names.csv"):
        assert (tmp_path / "relayed" / name).read_bytes() == (tmp_path / "direct" / name).read_bytes()
    assert "Zürich" in (tmp_path / "relayed" / "people.tsv").read_text()


def test_pgml_version_is_answered_by_the_server(upstream, server, tmp_path):
    out = run_psql(upstream.bin_dir, server.dsn(), tmp_path, "-At", "-c", "SELECT pgml.version()")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == __version__
    # The upstream itself has no such function: the answer really comes from pgml-server.
    direct = run_psql(upstream.bin_dir, upstream.dsn, tmp_path, "-At", "-c", "SELECT pgml.version()")
    assert "pgml" in direct.stderr and direct.stdout == ""


def test_pgml_version_between_forwarded_statements(upstream, server, tmp_path):
    script = tmp_path / "mixed.sql"
    script.write_text("SELECT 1 AS before;\nSELECT pgml.version();\nSELECT 1/0;\n"
                      "BEGIN;\nSELECT pgml.version() AS in_tx;\nSELECT 'after' AS after;\nCOMMIT;\n"
                      "SELECT pgml.version() AS again;\n")
    out = run_psql(upstream.bin_dir, server.dsn(), tmp_path, "-Atq", "-f", str(script))
    assert out.stdout.split("\n") == ["1", __version__, __version__, "after", __version__, ""]
    assert "division by zero" in out.stderr
