"""pgJDBC through pgml-server: tests/clients/jdbc/PgmlJdbc.java's transcript is the same as direct.

The program covers pgJDBC's own traffic: PreparedStatements past prepareThreshold (named server
statements, binary results), batches with a BatchUpdateException, setFetchSize cursors (Execute with
max_rows, PortalSuspended), COPY through CopyManager, savepoints, SQLSTATEs with the server's error
fields, a query timeout (CancelRequest), DatabaseMetaData catalog queries, and pgml.* calls.
Needs javac and the Debian jar (`make test` installs libpostgresql-jdbc-java when it can).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.transcripts import diff, lines, run, values

SOURCE = Path(__file__).parent / "clients" / "jdbc" / "PgmlJdbc.java"
JAR = Path(os.environ.get("PGJDBC_JAR", "/usr/share/java/postgresql.jar"))


def jdbc_url(dsn: str) -> str:
    parts = urlsplit(dsn)
    return f"jdbc:postgresql://{parts.hostname}:{parts.port}/postgres?user=postgres"


@pytest.fixture(scope="module")
def classes(tmp_path_factory) -> Path:
    javac = shutil.which("javac")
    if javac is None or shutil.which("java") is None:
        pytest.skip("javac not found")
    if not JAR.exists():
        pytest.skip(f"{JAR} not found: apt-get install libpostgresql-jdbc-java")
    out = tmp_path_factory.mktemp("jdbc")
    proc = subprocess.run([javac, "-encoding", "UTF-8", "-cp", str(JAR), "-d", str(out), str(SOURCE)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def run_program(classes: Path, dsn: str, *args: str) -> str:
    java = shutil.which("java")
    # UTC and English: timestamps and pgJDBC's own messages do not depend on the machine.
    return run([java, "-Duser.timezone=UTC", "-Duser.language=en", "-Duser.country=US", "-Dfile.encoding=UTF-8",
                "-cp", f"{classes}{os.pathsep}{JAR}", "PgmlJdbc", jdbc_url(dsn), *args], timeout=180)


@pytest.fixture(scope="module")
def transcripts(classes, upstream, server) -> tuple[str, str]:
    """(direct, through the server with the pgml checks); printed, so a failure shows both."""
    direct = run_program(classes, upstream.dsn)
    relayed = run_program(classes, server.dsn(), "pgml")
    print("--- direct\n" + direct + "--- through pgml-server\n" + relayed)
    return direct, relayed


def test_the_program_exercises_what_it_claims(transcripts):
    direct, _ = transcripts
    got = values(direct)
    assert not [line for line in direct.splitlines() if ".UNEXPECTED" in line or ".reset" in line], direct
    assert got["end"] == "[done]"
    # Named server-side statements after prepareThreshold=5, for plain queries and portals.
    assert "server_prepared=false" in got["prepared.0"] and "server_prepared=true" in got["prepared.7"]
    assert "server_prepared=true" in got["cursor.interleaved.5"]
    assert "S_1," in got["prepared.statements"]
    assert got["batch.counts"] == "100 sum=100"
    assert got["batch.error"].startswith("23505 ") and got["batch.error.next"].startswith("23505 |")
    assert got["batch.after_error"] == "[0]"     # the batch is one implicit transaction
    assert got["cursor.statement"].startswith("990 sum=")
    assert got["copy.in"] == "500" and got["copy.out"] == "500" and got["copy.bad"].startswith("22P02 |")
    assert got["transaction.aborted"].startswith("25P02 |") and got["transaction.read_only"].startswith("25006 |")
    assert [got[f"errors.{i}"][:5] for i in range(7)] == ["42P01", "23505", "23502", "22012", "42601", "22P02", "42703"]
    assert got["errors.timeout"].startswith("57014 |")
    assert got["errors.warnings"] == "[00000 notice 42, 01000 warning ü]"
    assert got["metadata.tables"] == "[jdbc_copy/TABLE, jdbc_items/TABLE, jdbc_serial/TABLE]"
    assert got["metadata.column.price"].startswith("3 float8 8 ")


def test_transcript_through_the_server_is_the_upstreams(transcripts):
    direct, relayed = transcripts
    a, b = lines(direct, pgml=False), lines(relayed, pgml=False)
    assert b == a, diff(a, b)


def test_pgml_calls(transcripts):
    _, relayed = transcripts
    got = values(relayed)
    pgml_lines = lines(relayed, pgml=True)
    assert not [line for line in pgml_lines if ".UNEXPECTED" in line or ".reset" in line], "\n".join(pgml_lines)
    assert got["pgml.load_dataset"] == "[pgml.iris,150]"
    assert re.fullmatch(r"\[jdbc_iris,classification,linear,[tf]\]", got["pgml.train"])
    # Three unambiguous flowers, as float8[] (setArray), real[] and a primitive double[] (setObject),
    # before and after pgJDBC switches to a named server statement.
    predictions = {k: v for k, v in got.items() if k.startswith("pgml.predict.")}
    assert len(predictions) == 8 + 6 + 6
    for name, value in predictions.items():
        expected, predicted = re.fullmatch(r"expected=(\d) got=(\S+).*", value).groups()
        assert float(predicted) == float(expected), (name, value)
    assert "server_prepared=true" in got["pgml.predict.float8.7"]
    assert got["pgml.predict_proba"] == "3 argmax0=true sum=1.0"
    # Over the table: the stream path, bound parameters, the general path (WHERE), a fetch-size portal.
    count, correct, lo, hi = map(int, re.fullmatch(r"\[(\d+),(\d+),(\d+),(\d+)\]", got["pgml.table.stream"]).groups())
    assert count == 150 and correct >= 135 and (lo, hi) == (0, 2)
    per_target = [re.fullmatch(r"50 correct=(\d+)", got[f"pgml.table.target.{t}"]) for t in range(3)]
    assert all(per_target) and sum(int(m.group(1)) for m in per_target) == correct
    assert {got[f"pgml.table.where.{i}"] for i in range(6)} == {str(correct)}
    assert got["pgml.table.fetch_size"] == f"150 correct={correct}"
    # Errors: an unknown project, pgml.train in a transaction block, savepoints around a failing call.
    assert got["pgml.errors.unknown_project"] == "42704"
    assert got["pgml.errors.train_in_tx"] == "25001"
    assert got["pgml.errors.after_train_in_tx"] == "25P02"
    assert got["pgml.errors.in_savepoint"] == "42704"
    assert got["pgml.errors.tx_predict"] == got["pgml.errors.after_savepoint"] == "[0]"
    assert got["pgml.errors.usable"] == "[usable]"
