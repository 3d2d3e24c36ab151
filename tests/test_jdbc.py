"""pgJDBC through pgml-server: tests/clients/jdbc/PgmlJdbc.java's transcript is the same as direct.

The program covers pgJDBC's own traffic: PreparedStatements past prepareThreshold (named server
statements, binary results), batches with a BatchUpdateException, setFetchSize cursors (Execute with
max_rows, PortalSuspended), COPY through CopyManager, savepoints, SQLSTATEs with the server's error
fields, a query timeout (CancelRequest), DatabaseMetaData catalog queries, bytea/uuid/date
parameters, CallableStatements, an updatable ResultSet, large objects (fastpath FunctionCall),
LISTEN/NOTIFY, and pgml.* calls; in pgJDBC's default, named-statement and simple query modes.
Needs javac and the Debian jar (`make test` installs libpostgresql-jdbc-java when it can).
"""
from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from protocol import messages as m
from tests.rawwire import exchange
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


# pgJDBC's kinds of traffic: the default (unnamed statements, named ones from the 5th execution,
# Describe only when a type is unknown), named statements with binary transfer and a Describe from
# the first execution (prepareThreshold=-1), and parameters inlined into simple Query messages.
MODES = {"default": "", "named": "&prepareThreshold=-1", "simple": "&preferQueryMode=simple"}
PGML_MODES = ("default", "named")    # simple: pgJDBC inlines setArray as an untyped '{"5.1",...}' literal



def run_program(classes: Path, dsn: str, mode: str, *args: str) -> str:
    java = shutil.which("java")
    # UTC and English: timestamps and pgJDBC's own messages do not depend on the machine.
    return run([java, "-Duser.timezone=UTC", "-Duser.language=en", "-Duser.country=US", "-Dfile.encoding=UTF-8",
                "-Dstdout.encoding=UTF-8",
                "-cp", f"{classes}{os.pathsep}{JAR}", "PgmlJdbc", jdbc_url(dsn) + MODES[mode], *args], timeout=180)


@pytest.fixture(scope="module")
def transcripts(classes, upstream, server):
    """transcripts(mode) -> (direct, through the server), each run once; printed, so a failure shows both."""
    done: dict[str, tuple[str, str]] = {}

    def get(mode: str) -> tuple[str, str]:
        if mode not in done:
            direct = run_program(classes, upstream.dsn, mode)
            relayed = run_program(classes, server.dsn(), mode, *(["pgml"] if mode in PGML_MODES else []))
            done[mode] = direct, relayed
        direct, relayed = done[mode]
        print(f"--- direct ({mode})\n{direct}--- through pgml-server ({mode})\n{relayed}")
        return done[mode]
    return get


def unexpected(transcript: str) -> list[str]:
    return [line for line in transcript.splitlines() if ".UNEXPECTED" in line or ".reset" in line]


@pytest.mark.parametrize("mode", list(MODES))
def test_the_program_exercises_what_it_claims(transcripts, mode):
    direct, _ = transcripts(mode)
    got = values(direct)
    assert not unexpected(direct), direct
    assert got["end"] == "[done]"
    if mode == "default":     # named server-side statements after prepareThreshold=5, for queries and portals
        assert "server_prepared=false" in got["prepared.0"] and "server_prepared=true" in got["prepared.7"]
        assert "server_prepared=true" in got["cursor.interleaved.5"]
    if mode != "simple":
        assert "S_1," in got["prepared.statements"]
        assert got["metadata.resultset"].startswith("[id:int4:jdbc_items:0, ")
    assert got["batch.counts"] == "100 sum=100"
    assert got["batch.error"].startswith("23505 ") and got["batch.error.next"].startswith("23505 |")
    if mode != "simple":      # the batch is one implicit transaction (simple mode: one per statement)
        assert got["batch.after_error"] == "[0]"
    assert got["cursor.statement"].startswith("990 sum=")
    assert got["copy.in"] == "500" and got["copy.out"] == "500" and got["copy.bad"].startswith("22P02 |")
    assert got["transaction.aborted"].startswith("25P02 |") and got["transaction.read_only"].startswith("25006 |")
    assert [got[f"errors.{i}"][:5] for i in range(7)] == ["42P01", "23505", "23502", "22012", "42601", "22P02", "42703"]
    assert got["errors.prepared.6"].startswith("22P02 |")
    assert got["errors.timeout"].startswith("57014 |")
    assert got["errors.warnings"] == "[00000 notice 42, 01000 warning ü]"
    assert got["metadata.tables"] == "[jdbc_copy/TABLE, jdbc_items/TABLE, jdbc_serial/TABLE]"
    assert got["more.large_object"].startswith("100000 [26, 33, ")      # fastpath FunctionCall messages
    assert got["more.updatable"] == "[1,updated via ResultSet, 2,item 2, 8001,inserted via ResultSet]"
    assert got["more.notify"] == "1 jdbc_chan from jdbc ü"
    assert {v for k, v in got.items() if k.endswith("pid_matches")} == {"true"}
    assert got["metadata.column.price"].startswith("3 float8 8 ")


@pytest.mark.parametrize("mode", list(MODES))
def test_transcript_through_the_server_is_the_upstreams(transcripts, mode):
    """Everything but the pid comparisons (the two tests below) and the pgml lines."""
    direct, relayed = transcripts(mode)
    a = lines(direct, pgml=False, exclude=("pid_matches",))
    b = lines(relayed, pgml=False, exclude=("pid_matches",))
    assert b == a, diff(a, b)


def test_notification_pid_is_the_backends(transcripts):
    """PGNotification.getPID() is the notifying backend's pg_backend_pid() (here: its own)."""
    assert values(transcripts("default")[1])["more.notify.pid_matches"] == "true"


def test_backend_key_data_pid_is_the_upstreams(transcripts):
    """PGConnection.getBackendPID() (from BackendKeyData) is the connection's pg_backend_pid(), as direct."""
    assert values(transcripts("default")[1])["more.backend_key.pid_matches"] == "true"


@pytest.mark.parametrize("mode", ["default", "named"])
def test_pgml_calls(transcripts, mode):
    _, relayed = transcripts(mode)
    got = values(relayed)
    pgml_lines = lines(relayed, pgml=True, exclude=("pgml.declared",))
    assert not unexpected("\n".join(pgml_lines)), "\n".join(pgml_lines)
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
    count, correct, lo, hi = map(int, re.fullmatch(r"\[(\d+),(\d+),(\d+)(?:\.0)?,(\d+)(?:\.0)?\]",
                                                   got["pgml.table.stream"]).groups())
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
    # (a real read as text is "0"; with binary transfer, in the named mode, pgJDBC prints it as 0.0)
    assert got["pgml.errors.tx_predict"] == got["pgml.errors.after_savepoint"] in ("[0]", "[0.0]")
    assert got["pgml.errors.usable"] == "[usable]"


@pytest.mark.parametrize("mode", PGML_MODES)
def test_pgml_over_a_table_with_declared_parameter_types(transcripts, mode):
    got = values(transcripts(mode)[1])
    assert [got[f"pgml.declared.reuse.{i}"] for i in range(6)] == ["50"] * 6
    assert got["pgml.declared.int8"] == "50"
    assert [got[f"pgml.declared.real_array.{i}"] for i in range(2)] == ["2.0", "2.0"]


# The same without Java: the messages pgJDBC sends (Parse with declared types, binary int8).

FEATURES = "ARRAY[sepal_length, sepal_width, petal_length, petal_width]"
STREAM = f"SELECT target, pgml.predict($1, {FEATURES}) AS p FROM pgml.iris WHERE target = $2"
# What the upstream would be asked with the call replaced by its features: declared types are PostgreSQL's.
UPSTREAM_STAND_IN = f"SELECT target, {FEATURES} AS p FROM pgml.iris WHERE target = $2 AND $1::text IS NOT NULL"


@pytest.fixture(scope="module")
def raw_model(server) -> None:
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("SELECT * FROM pgml.load_dataset('iris')")
        conn.execute("SELECT * FROM pgml.train('raw_jdbc_iris', 'classification', 'pgml.iris', 'target', 'linear')")


def describe_and_run(port: int, sql: str, oids: list[int], params: list[bytes], formats: list[int]):
    described = exchange(port, m.Parse("", sql, oids), m.Describe("S", ""), m.Sync())
    ran = exchange(port, m.Parse("", sql, oids), m.Bind("", "", formats, params, []), m.Execute("", 0), m.Sync())
    return [a[1] for a in described if a[0] == "t"], [a[0] if a[0] != "E" else a[1] for a in ran]


def test_stream_predict_with_undeclared_parameter_types(server, raw_model):
    desc, ran = describe_and_run(server.port, STREAM, [0, 0], [b"raw_jdbc_iris", b"1"], [])
    assert desc == [[25, 23]]
    assert ran == ["1", "2"] + ["D"] * 50 + ["C", "Z"], ran


def test_stream_predict_takes_a_binary_real_array(server, raw_model):
    real_array = struct.pack("!iiiii", 1, 0, 700, 4, 1) + b"".join(struct.pack("!if", 4, v) for v in (6.7, 3.0, 5.2, 2.3))
    answers = exchange(server.port, m.Parse("", "SELECT pgml.predict($1, $2) AS p, 1 AS one", [1043, 1021]),
                       m.Bind("", "", [0, 1], [b"raw_jdbc_iris", real_array], []), m.Execute("", 0), m.Sync())
    assert answers == [("1", None), ("2", None), ("D", [b"2", b"1"]), ("C", None), ("Z", None)]


def test_stream_predict_keeps_declared_parameter_types(upstream, server, raw_model):
    int8 = struct.pack("!q", 1)
    expected = describe_and_run(int(urlsplit(upstream.dsn).port), UPSTREAM_STAND_IN, [1043, 20],
                                [b"raw_jdbc_iris", int8], [0, 1])
    assert expected == ([[1043, 20]], ["1", "2"] + ["D"] * 50 + ["C", "Z"])
    assert describe_and_run(server.port, STREAM, [1043, 20], [b"raw_jdbc_iris", int8], [0, 1]) == expected
