"""The router classifies statements purely: (sql, expected route) tables, no database."""
from __future__ import annotations

import pytest

from protocol import sqlstate, types
from protocol.errors import PgError

from pgml_server.sql.predict import rewrite
from pgml_server.sql.router import ERROR, FORWARD, LOCAL, MULTI, REWRITE, Router
from pgml_server.functions.base import evaluate


@pytest.fixture(scope="module")
def router():
    return Router(rewriter=rewrite)


@pytest.mark.parametrize("sql, kind", [
    ("SELECT 1", FORWARD),
    ("SELECT * FROM pgml.models", FORWARD),
    ("SELECT pgml_custom_column FROM t", FORWARD),
    ("SELEKT pgml.version()", FORWARD),                      # the upstream reports the syntax error
    ("SELECT pgml.version()", LOCAL),
    ("select PGML.VERSION()", LOCAL),
    ("SELECT * FROM pgml.version()", LOCAL),
    ("SELECT pgml.version() AS v, pgml.version()", LOCAL),
    ("SELECT pgml.predict('p', ARRAY[1, 2, 3])", LOCAL),
    ("SELECT pgml.predict('p', 1, 2, 3)", LOCAL),
    ("SELECT pgml.predict($1, $2::float8[])", LOCAL),
    ("SELECT * FROM pgml.train('p', 'regression', 'pgml.diabetes', 'target')", LOCAL),
    ("SELECT pgml.train(project_name => 'p', algorithm => 'ridge')", LOCAL),
    ("SELECT pgml.predict('p', ARRAY[a, b]) FROM t", REWRITE),
    ("SELECT a FROM t WHERE pgml.predict('p', ARRAY[a, b]) > 1", REWRITE),
    ("SELECT 1; SELECT pgml.version()", MULTI),
    ("SELECT 1; SELECT 2", FORWARD),
    ("SELECT pgml.no_such_function()", FORWARD),               # the upstream says it does not exist
    ("SELECT pgml.version(1, 2)", ERROR),
    ("SELECT pgml.train('p', nope => 1)", ERROR),
])
def test_classification(router, sql, kind):
    assert router.classify(sql).kind == kind


def test_cached_by_text(router):
    assert router.classify("SELECT pgml.version()") is router.classify("SELECT pgml.version()")


def test_parameter_types_are_inferred(router):
    stmt = router.classify("SELECT pgml.predict($1, $2::float8[])").statement
    assert stmt.param_types == [types.TEXT, types.ARRAY_OF[types.FLOAT8]]
    assert stmt.columns == [("predict", types.FLOAT4)]
    stmt = router.classify("SELECT pgml.predict('p', $1)").statement
    assert stmt.param_types == [types.ARRAY_OF[types.FLOAT4]]


def test_named_positional_and_defaults(router):
    call = router.classify("SELECT pgml.train('p', 'regression', algorithm => 'ridge', "
                           "hyperparams => '{\"alpha\": 2}', test_size => 0.3)").statement.calls[0]
    args = call.arguments([])
    assert args["project_name"] == "p" and args["task"] == "regression"
    assert args["algorithm"] == "ridge" and args["hyperparams"] == {"alpha": 2}
    assert args["test_size"] == pytest.approx(0.3)
    assert args["test_sampling"] == "random" and args["automatic_deploy"] is True


def test_variadic_and_casts(router):
    call = router.classify("SELECT pgml.predict('p', 1, -2.5, 3)").statement.calls[0]
    assert call.arguments([])["features"] == (1, -2.5, 3)        # VARIADIC values are a row
    call = router.classify("SELECT pgml.predict('p', '{1,2,3}'::real[])").statement.calls[0]
    assert call.arguments([])["features"] == [1.0, 2.0, 3.0]
    call = router.classify("SELECT pgml.predict(7, ARRAY[true, false])").statement.calls[0]
    args = call.arguments([])
    assert args["project_name"] == 7 and args["features"] == [True, False]


def test_bad_argument_values_are_clean_errors(router):
    call = router.classify("SELECT pgml.train('p', test_size => 'abc')").statement.calls[0]
    with pytest.raises(PgError) as info:
        call.arguments([])
    assert info.value.sqlstate == sqlstate.INVALID_PARAMETER_VALUE


def test_unsupported_position_is_0A000(router):
    route = router.classify("SELECT pgml.train('p') FROM t")
    assert route.kind == ERROR and route.error.sqlstate == sqlstate.FEATURE_NOT_SUPPORTED
