"""node-postgres (`pg`) through pgml-server: tests/clients/node/pgml_pg.js's transcript is the same as direct.

The script covers pg's own traffic: parameterised queries (numbers, text, NULL, arrays, Date, jsonb,
bytea; Parse without parameter types), named statements reused, simple-protocol multi-statements,
errors' err.code and fields, queued queries, transactions and savepoints, pg-cursor portals (Execute
with max_rows + Flush, no Sync until done), LISTEN/NOTIFY from the upstream directly and through the
server, and pgml.* calls. Needs node and `npm ci` in tests/clients/node (`make test` runs it).
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import psycopg
import pytest

from protocol import messages as m
from tests.rawwire import exchange
from tests.transcripts import diff, lines, run, values

NODE_DIR = Path(__file__).parent / "clients" / "node"
SCRIPT = NODE_DIR / "pgml_pg.js"


@pytest.fixture(scope="module")
def node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not found")
    if not (NODE_DIR / "node_modules" / "pg").is_dir() or not (NODE_DIR / "node_modules" / "pg-cursor").is_dir():
        pytest.skip("node_modules missing: run npm ci in tests/clients/node")
    return node


def run_script(node: str, target: str, upstream: str, *args: str) -> str:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TZ": "UTC", "LC_ALL": "C.UTF-8",
           "NODE_NO_WARNINGS": "1"}   # pg 8 warns (stderr) about the deliberately queued queries
    return run([node, SCRIPT, target, upstream, *args], timeout=120, cwd=NODE_DIR, env=env)


@pytest.fixture(scope="module")
def runs(node, upstream, server) -> tuple[str, str]:
    """(direct, through the server with the pgml checks), run once for the module."""
    return run_script(node, upstream.dsn, upstream.dsn), run_script(node, server.dsn(), upstream.dsn, "pgml")


@pytest.fixture
def transcripts(runs) -> tuple[str, str]:
    """The module's runs, printed in every test, so any failure shows both transcripts."""
    direct, relayed = runs
    print("--- direct\n" + direct + "--- through pgml-server\n" + relayed)
    return runs


def test_the_script_exercises_what_it_claims(transcripts):
    direct, _ = transcripts
    got = values(direct)
    assert ".UNEXPECTED" not in direct, direct
    assert got["end"] == '[{"d":"done"}]'
    assert '"d":"Date(2024-02-29T12:34:56.789Z)"' in got["params.row"] and '"a":[1,2,null]' in got["params.row"]
    assert "node-item" in got["named.statements"] and got["named.error"].startswith("22P02 |")
    assert [got[f"errors.{i}"][:5] for i in range(8)] == ["42P01", "23505", "23502", "22012", "22012", "42601",
                                                          "22P02", "08P01"]
    assert got["errors.queued"] == '[10,20,"22012",40,50]'
    assert got["transaction.aborted"].startswith("25P02 |")
    assert got["cursor.read"] == "1000 rows in 100 reads, sum=500500"
    assert got["cursor.error"].startswith("22012 |") and got["cursor.in_failed_tx"].startswith("25P02 |")
    for sender in ("direct", "target"):
        assert got[f"listen.{sender}.notify"] == f"node_chan from {sender} ü"
        assert got[f"listen.{sender}.pg_notify"] == f"node_chan pg_notify from {sender}"
    assert got["listen.busy.notify"] == "node_chan while busy" and got["listen.unlisten"] == "nothing"
    assert {v for k, v in got.items() if k.endswith("pid_matches")} == {"true"}


def test_transcript_through_the_server_is_the_upstreams(transcripts):
    """Everything but the pid comparisons (the two tests below) and the pgml lines."""
    direct, relayed = transcripts
    a = lines(direct, pgml=False, exclude=("pid_matches",))
    b = lines(relayed, pgml=False, exclude=("pid_matches",))
    assert b == a, diff(a, b)


def test_notification_pid_is_the_notifiers(transcripts):
    """NotificationResponse's pid is the notifying backend's pg_backend_pid(), wherever NOTIFY came from."""
    got = values(transcripts[1])
    assert [got[f"listen.{s}.pid_matches"] for s in ("direct", "target", "self")] == ["true"] * 3


def test_backend_key_data_pid_is_the_upstreams(transcripts):
    """client.processID (from BackendKeyData) is the listener's own pg_backend_pid(), as direct."""
    assert values(transcripts[1])["listen.backend_key.pid_matches"] == "true"


def test_pgml_calls(transcripts):
    _, relayed = transcripts
    got = values(relayed)
    pgml_lines = lines(relayed, pgml=True)
    assert ".UNEXPECTED" not in relayed, "\n".join(pgml_lines)
    assert got["pgml.load_dataset"] == '[{"table_name":"pgml.iris","rows":"150"}]'
    assert re.fullmatch(r'\[\{"project":"node_iris","task":"classification","algorithm":"linear","deployed":(true|false)\}\]',
                        got["pgml.train"])
    # Parameterised arrays: untyped ($2 with no cast: pg sends a text '{...}' of unspecified type),
    # float8[], real[], and a named statement reused.
    predictions = {k: v for k, v in got.items() if re.fullmatch(r"pgml\.predict\.\w+\.\d", k)}
    assert len(predictions) == 3 * 3 + 6
    for name, value in predictions.items():
        assert re.fullmatch(r"expected=(\d) got=\1", value), (name, value)
    assert got["pgml.predict.binary"] == "expected=2 got=2 format=binary"
    assert got["pgml.predict_proba"] == "3 argmax0=true sum=1"
    assert got["pgml.predict.unknown_project"].startswith("42704 |")
    assert got["pgml.predict.usable"] == '[{"one":1}]'
    # Over the table without bind parameters: the stream path, the general path, a pg-cursor portal.
    correct = int(re.fullmatch(r"150 correct=(\d+)", got["pgml.table.stream"]).group(1))
    assert correct >= 135
    assert got["pgml.table.where"] == f'[{{"n":{correct}}}]'
    assert got["pgml.table.cursor"] == f"150 correct={correct}"
    assert got["pgml.table.param.stream"] == f"150 correct={correct}"
    assert got["pgml.table.usable"] == '[{"one":1}]'




def test_pgml_over_a_table_with_bind_parameters(transcripts):
    got = values(transcripts[1])
    correct = got["pgml.table.stream"].split("correct=")[1]
    per_target = [got[f"pgml.table.param.target.{t}"] for t in range(3)]
    assert all(re.fullmatch(r"50 correct=\d+", v) for v in per_target), per_target
    assert got["pgml.table.param.where"] == f'[{{"n":{correct}}}]'
    assert got["pgml.table.param.aggregate"] == f'[{{"n":150,"correct":{correct}}}]'
    assert got["pgml.table.param.extra_column"] == "got=2 one=1"


# The same without node: the raw messages node-postgres sends (Parse with no parameter types).

FEATURES = "ARRAY[sepal_length, sepal_width, petal_length, petal_width]"
QUERIES = {
    "where": (f"SELECT count(*) FROM pgml.iris WHERE pgml.predict($1, {FEATURES}) = target", [b"raw_iris"]),
    "aggregate": (f"SELECT count(*) FROM (SELECT pgml.predict($1, {FEATURES}) AS p FROM pgml.iris) s WHERE p >= 0",
                  [b"raw_iris"]),
    "stream": (f"SELECT pgml.predict($1, {FEATURES}) FROM pgml.iris WHERE target = $2", [b"raw_iris", b"1"]),
    "extra_column": ("SELECT pgml.predict($1, $2::float8[]) AS p, 1 AS one", [b"raw_iris", b"{6.7,3.0,5.2,2.3}"]),
}


@pytest.fixture(scope="module")
def raw_model(server) -> None:
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("SELECT * FROM pgml.load_dataset('iris')")
        conn.execute("SELECT * FROM pgml.train('raw_iris', 'classification', 'pgml.iris', 'target', 'linear')")


def bound_answers(port: int, sql: str, params: list[bytes], param_oids: list[int]) -> list[str]:
    """Parse/Bind/Execute/Sync in one packet: the answers' types, an error as <SQLSTATE>:<message>."""
    answers = exchange(port, m.Parse("", sql, param_oids), m.Bind("", "", [], params, []), m.Execute("", 0), m.Sync())
    return [kind if kind != "E" else value for kind, value in answers]


@pytest.mark.parametrize("query", list(QUERIES))
def test_bound_predict_over_a_table_with_declared_parameter_types(server, raw_model, query):
    sql, params = QUERIES[query]
    answers = bound_answers(server.port, sql, params, [0] * len(params))
    assert answers[:2] == ["1", "2"] and answers[-2:] == ["C", "Z"] and "D" in answers, answers


@pytest.mark.parametrize("query", list(QUERIES))
def test_bound_predict_over_a_table_without_parameter_types(server, raw_model, query):
    sql, params = QUERIES[query]
    answers = bound_answers(server.port, sql, params, [])
    assert answers[:2] == ["1", "2"] and answers[-2:] == ["C", "Z"] and "D" in answers, answers
