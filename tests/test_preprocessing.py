"""Preprocessing without a database: column kinds, preprocess specs, the fitted Preprocessor, labels."""
from __future__ import annotations

import datetime as dt
import json
import pickle

import numpy as np
import pytest

from protocol.errors import PgError
from pgml_server.ml.preprocessing import (ColumnSpec, Labels, Preprocessor, TextColumn, column_kind, infer_task,
                                          needs_scaling, parse_preprocess)
from pgml_server.ml.preprocessing import columns as C
from pgml_server.ml.preprocessing import fit as F

# ---------------------------------------------------------------- column kinds


@pytest.mark.parametrize("oid, name, kind, subkind", [
    (21, None, C.NUMERIC, None), (23, None, C.NUMERIC, None), (20, None, C.NUMERIC, None),
    (700, None, C.NUMERIC, None), (701, None, C.NUMERIC, None), (1700, "numeric(10,2)", C.NUMERIC, None),
    (26, None, C.NUMERIC, None), (16, None, C.BOOLEAN, None), (25, None, C.CATEGORICAL, None),
    (1043, "character varying(10)", C.CATEGORICAL, None), (1042, "character(3)", C.CATEGORICAL, None),
    (18, None, C.CATEGORICAL, None), (19, None, C.CATEGORICAL, None), (None, "citext", C.CATEGORICAL, None),
    (1082, None, C.TEMPORAL, "date"), (1114, "timestamp(3) without time zone", C.TEMPORAL, "timestamp"),
    (1184, None, C.TEMPORAL, "timestamptz"), (1083, None, C.TEMPORAL, "time"), (1266, None, C.TEMPORAL, "timetz"),
    (1186, "interval day to second", C.TEMPORAL, "interval"), (1021, None, C.ARRAY, C.NUMERIC),
    (1007, None, C.ARRAY, C.NUMERIC), (1000, None, C.ARRAY, C.BOOLEAN), (1231, "numeric(5,1)[]", C.ARRAY, C.NUMERIC),
    (None, "double precision", C.NUMERIC, None), (None, "timestamp with time zone", C.TEMPORAL, "timestamptz"),
    (None, "bigint[]", C.ARRAY, C.NUMERIC), (None, "_float8", C.ARRAY, C.NUMERIC),
])
def test_supported_kinds(oid, name, kind, subkind):
    k = column_kind("c", oid, name)
    assert (k.kind, k.subkind) == (kind, subkind)
    assert C.ColumnKind.from_json(json.loads(json.dumps(k.to_json()))) == k


def test_enum_is_categorical_and_integers_are_marked():
    assert column_kind("m", 16423, "mood", enum=True).kind == C.CATEGORICAL
    assert column_kind("i", 23).integer and not column_kind("f", 701).integer


@pytest.mark.parametrize("oid, name, state, words", [
    (3802, None, "0A000", "jsonb"), (114, None, "0A000", "json"), (17, None, "0A000", "bytea"),
    (2950, None, "0A000", "uuid"), (142, None, "0A000", "xml"), (600, None, "0A000", "point"),
    (3614, None, "0A000", "tsvector"), (3904, None, "0A000", "int4range"), (869, None, "0A000", "inet"),
    (1009, None, "0A000", "text[]"), (790, None, "42804", "money"), (None, "hstore", "0A000", "hstore"),
])
def test_refused_types_name_the_column(oid, name, state, words):
    with pytest.raises(PgError) as err:
        column_kind("payload", oid, name)
    assert err.value.sqlstate == state
    assert '"payload"' in err.value.message and words in err.value.message and err.value.hint


# ---------------------------------------------------------------- preprocess specs

KINDS = [column_kind("x", 701), column_kind("city", 25), column_kind("ts", 1184), column_kind("v", 1021)]


def test_parse_preprocess_all_options():
    from pgml_server.ml.preprocessing.spec import ENCODE, IMPUTE, SCALE
    for impute in IMPUTE:
        assert parse_preprocess({"x": {"impute": impute}}, KINDS)["x"].impute == impute
    for scale in SCALE:
        assert parse_preprocess({"x": {"scale": scale}}, KINDS)["x"].scale == scale
    for encode in ("native", "target", "one_hot"):
        assert parse_preprocess({"city": {"encode": encode}}, KINDS)["city"].encode == encode
    assert ENCODE[-1] == "ordinal"
    spec = parse_preprocess('{"city": {"encode": {"ordinal": ["a", "b"]}, "impute": "mode"}}', KINDS)["city"]
    assert (spec.encode, spec.ordinal, spec.impute, spec.scale) == ("ordinal", ("a", "b"), "mode", None)
    assert ColumnSpec.from_json(spec.to_json()) == spec
    assert parse_preprocess({"city": {"encode": "none"}}, KINDS)["city"].encode == "native"
    assert parse_preprocess(None, KINDS) == {} and parse_preprocess({}, ["x"]) == {}


@pytest.mark.parametrize("obj, words", [
    ({"nope": {"impute": "mean"}}, ['"nope"', "Feature columns"]),
    ({"x": {"impute": "avg"}}, ['"x"', "mean, median"]),
    ({"x": {"scale": "z"}}, ['"x"', "standard"]),
    ({"city": {"encode": "hash"}}, ['"city"', "one_hot"]),
    ({"city": {"encode": "ordinal"}}, ['"city"', "in order"]),
    ({"city": {"encode": {"ordinal": []}}}, ['"city"']),
    ({"city": {"encode": {"ordinal": ["a", "a"]}}}, ["distinct"]),
    ({"city": {"encode": {"ordinal": [None]}}}, ["strings or numbers"]),
    ({"city": {"encode": {"rank": ["a"]}}}, ["ordinal"]),
    ({"x": {"imputes": "mean"}}, ['"imputes"', "impute, scale, encode"]),
    ({"x": "mean"}, ['"x"', "object"]),
    ({"ts": {"encode": "one_hot"}}, ["temporal"]),
    ({"v": {"encode": "target"}}, ["array"]),
    ([1, 2], ["JSON object"]),
    ("{not json", ["not valid JSON"]),
])
def test_parse_preprocess_errors(obj, words):
    with pytest.raises(PgError) as err:
        parse_preprocess(obj, KINDS)
    assert err.value.sqlstate == "22023"
    text = err.value.message + " " + (err.value.hint or "")
    for w in words:
        assert w in text


# ---------------------------------------------------------------- the preprocessor

def data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(10, 3, n)
    x[::17] = np.nan
    cities = np.array(["Paris", "Rome", "Oslo", "Zürich"])[rng.integers(0, 4, n)].astype(object)
    cities[::11] = None
    many = np.array([f"k{i}" for i in range(40)])[rng.integers(0, 40, n)].astype(object)
    ts = rng.uniform(0, 2e9, n)
    ts[5] = np.nan
    b = (rng.random(n) < 0.3).astype(float)
    b[7] = np.nan
    v = rng.normal(0, 1, (n, 3))
    v[3, 1] = np.nan
    y = 2 * np.nan_to_num(x) + rng.normal(0, 1, n)
    cols = {"x": x, "city": list(cities), "many": list(many), "ts": ts, "b": b, "v": v,
            "d": np.floor(ts / 86400) * 86400, "tm": ts % 86400, "iv": ts / 1000}
    return cols, y


def kinds():
    return [column_kind("x", 701), column_kind("city", 25), column_kind("many", 1043), column_kind("ts", 1184),
            column_kind("b", 16), column_kind("v", 1022), column_kind("d", 1082), column_kind("tm", 1083),
            column_kind("iv", 1186)]


def fitted(spec=None, algorithm="xgboost", task="regression", **kw):
    cols, y = data()
    return Preprocessor(kinds(), **kw).fit(cols, y, task=task, algorithm=algorithm, spec=spec), cols, y


def test_automatic_choices_and_names():
    p, cols, _ = fitted()
    names = p.feature_names()
    assert names[:1] == ["x"]
    assert [n for n in names if n.startswith("city")] == ["city=Oslo", "city=Paris", "city=Rome", "city=Zürich",
                                                          "city=NULL"]
    assert "many.target" in names                                        # 40 distinct > 10: target encoding
    assert [n for n in names if n.startswith("ts")] == ["ts", "ts.dow", "ts.month", "ts.day", "ts.hour"]
    assert [n for n in names if n.startswith("d")] == ["d", "d.dow", "d.month", "d.day"]
    assert "tm" in names and "iv" in names and not any(n.startswith("tm.") for n in names)
    assert ["v[1]", "v[2]", "v[3]"] == [n for n in names if n.startswith("v")]
    assert len(names) == p.num_features == len(p.feature_sources())
    assert p.feature_sources()[names.index("city=Rome")] == "city"
    X = p.transform(cols)
    assert X.shape == (200, p.num_features) and np.isfinite(X).all()
    # trees: no scaling; NULL numeric → training mean; one-hot rows sum to 1
    assert X[0, 0] == pytest.approx(np.nanmean(cols["x"]))
    onehot = [i for i, n in enumerate(names) if n.startswith("city=")]
    np.testing.assert_array_equal(X[:, onehot].sum(axis=1), 1)
    assert X[0, names.index("city=NULL")] == 1                           # row 0 is NULL: its own category
    b = names.index("b")
    assert X[7, b] == 0                                                  # boolean NULL → mode (False)
    info = p.analysis()
    json.dumps(info, allow_nan=False)
    by = {c["name"]: c for c in info["columns"]}
    assert by["x"]["nulls"] == 12 and by["x"]["preprocess"] == {"impute": "mean", "scale": "preserve",
                                                               "encode": "native"}
    assert by["city"]["preprocess"]["encode"] == "one_hot" and by["city"]["distinct"] == 4
    assert by["many"]["preprocess"]["encode"] == "target" and by["many"]["top_categories"][0][1] >= 5
    assert set(by["x"]["statistics"]) >= {"mean", "min", "max", "p25", "median", "p75", "std", "histogram"}
    assert sum(by["x"]["statistics"]["histogram"]["counts"]) == 200 - 12


def test_calendar_parts_match_python():
    k = [column_kind("t", 1114), column_kind("d", 1082)]
    stamps = [dt.datetime(2024, 3, 15, 13, 45, 30), dt.datetime(1969, 12, 31, 23, 0), dt.datetime(2000, 2, 29, 0, 5)]
    cols = {"t": stamps, "d": [s.date() for s in stamps]}
    p = Preprocessor(k).fit(cols, None, algorithm="random_forest")
    X = p.transform(cols)
    for i, s in enumerate(stamps):
        epoch = s.replace(tzinfo=dt.timezone.utc).timestamp()
        assert list(X[i, :5]) == [epoch, (s.isoweekday() % 7), s.month, s.day, s.hour]
        assert list(X[i, 5:]) == [epoch - epoch % 86400, s.isoweekday() % 7, s.month, s.day]


def test_temporal_python_values_convert_like_sql():
    k = [column_kind("tz", 1184), column_kind("tm", 1266), column_kind("iv", 1186)]
    p = Preprocessor(k).fit({"tz": [0.0, 10.0], "tm": [0.0, 1.0], "iv": [0.0, 1.0]}, None)
    aware = dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    row = p.transform_row([aware, dt.time(13, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))), dt.timedelta(days=1.5)])
    assert row[0, 0] == aware.timestamp() and row[0, 4] == 10 and row[0, 5] == 11 * 3600 and row[0, 6] == 1.5 * 86400
    with pytest.raises(PgError) as err:
        p.transform_row(["2024-01-01", 0, 0])
    assert err.value.sqlstate == "42804" and '"tz"' in err.value.message


@pytest.mark.parametrize("algorithm, scaled", [("linear", True), ("ridge", True), ("svm", True), ("kmeans", True),
                                               ("pca", True), ("xgboost", False), ("random_forest", False),
                                               ("lightgbm", False), (None, False)])
def test_scaling_follows_the_algorithm(algorithm, scaled):
    assert needs_scaling(algorithm) is scaled
    p, cols, _ = fitted(algorithm=algorithm)
    X = p.transform(cols)
    names = p.feature_names()
    for name in ("x", "ts", "ts.hour", "v[2]", "many.target"):
        j = names.index(name)
        if scaled:
            assert abs(X[:, j].mean()) < 1e-9 and X[:, j].std() == pytest.approx(1)
        else:
            assert X[:, j].std() != pytest.approx(1)
    onehot = [i for i, n in enumerate(names) if n.startswith("city=")]
    assert set(np.unique(X[:, onehot])) == {0.0, 1.0}                    # one-hot is never scaled


@pytest.mark.parametrize("impute", ["mean", "median", "mode", "min", "max", "zero"])
def test_numeric_impute_options(impute):
    x = np.array([1.0, 2.0, 2.0, np.nan, 10.0, np.inf])
    spec = parse_preprocess({"x": {"impute": impute}}, ["x"])
    p = Preprocessor([column_kind("x", 701)]).fit({"x": x}, None, spec=spec)
    good = x[np.isfinite(x)]
    expected = {"mean": good.mean(), "median": 2.0, "mode": 2.0, "min": 1.0, "max": 10.0, "zero": 0.0}[impute]
    out = p.transform({"x": x})[:, 0]
    assert out[3] == expected and out[5] == expected                     # NaN and ±Infinity are missing
    assert p.transform_row([None])[0, 0] == expected


@pytest.mark.parametrize("scale", ["preserve", "standard", "min_max", "max_abs", "robust"])
def test_scale_options(scale):
    x = np.array([-4.0, 1.0, 2.0, 3.0, 8.0])
    spec = parse_preprocess({"x": {"scale": scale}}, ["x"])
    out = Preprocessor([column_kind("x", 701)]).fit({"x": x}, None, spec=spec).transform({"x": x})[:, 0]
    q25, q50, q75 = np.percentile(x, [25, 50, 75])
    expected = {"preserve": x, "standard": (x - x.mean()) / x.std(), "min_max": (x + 4) / 12, "max_abs": x / 8,
                "robust": (x - q50) / (q75 - q25)}[scale]
    np.testing.assert_allclose(out, expected)


def test_constant_feature_is_not_divided_by_zero():
    p = Preprocessor([column_kind("x", 701)]).fit({"x": [3.0, 3.0]}, None, algorithm="ridge")
    np.testing.assert_array_equal(p.transform({"x": [3.0, 4.0]})[:, 0], [0.0, 1.0])


def test_impute_error_in_training_and_at_predict():
    spec = parse_preprocess({"x": {"impute": "error"}, "c": {"impute": "error"}}, ["x", "c"])
    k = [column_kind("x", 701), column_kind("c", 25)]
    with pytest.raises(PgError) as err:
        Preprocessor(k).fit({"x": [1.0, None], "c": ["a", "b"]}, None, spec=spec)
    assert err.value.sqlstate == "22004" and '"x"' in err.value.message and "1 missing value" in err.value.message
    with pytest.raises(PgError, match='"c"'):
        Preprocessor(k).fit({"x": [1.0, 2.0], "c": ["a", None]}, None, spec=spec)
    p = Preprocessor(k).fit({"x": [1.0, 2.0], "c": ["a", "b"]}, None, spec=spec)
    for row in ([None, "a"], [1.0, None]):
        with pytest.raises(PgError) as err:
            p.transform_row(row)
        assert err.value.sqlstate == "22004"


def test_unseen_category_maps_to_unknown():
    k = [column_kind("c", 25)]
    p = Preprocessor(k).fit({"c": ["a", "b", "a", None]}, None)
    assert p.feature_names() == ["c=a", "c=b", "c=NULL"]
    np.testing.assert_array_equal(p.transform({"c": ["zzz", "a", None, ""]}),
                                  [[0, 0, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0]])


def test_target_encoding_smoothing_and_frequency_cutoff():
    cats = ["big"] * 10 + ["small"] * 2 + [f"r{i}" for i in range(12)]
    y = np.array([1.0] * 10 + [0.0] * 2 + [0.0] * 12)
    k = [column_kind("c", 25)]
    p = Preprocessor(k).fit({"c": cats}, y, task="regression", algorithm="xgboost")
    assert p.feature_names() == ["c.target"]
    prior, s = y.mean(), F.SMOOTHING
    rare = (0 + s * prior) / (14 + s)                                   # small + r*: fewer than 5 → unknown
    out = p.transform({"c": ["big", "small", "never seen"]})[:, 0]
    np.testing.assert_allclose(out, [(10 + s * prior) / (10 + s), rare, rare])
    info = p.analysis()["columns"][0]
    assert info["vocabulary_size"] == 1 and info["preprocess"]["encode"] == "target"


def test_target_encoding_binary_and_multiclass():
    cats = [f"c{i % 12}" for i in range(240)]
    y3 = np.array([i % 3 for i in range(240)], dtype=float)
    p = Preprocessor([column_kind("c", 25)]).fit({"c": cats}, y3, task="classification")
    assert p.feature_names() == ["c.target[0]", "c.target[1]", "c.target[2]"]
    X = p.transform({"c": cats})
    np.testing.assert_allclose(X.sum(axis=1), 1)                        # per-class probabilities
    np.testing.assert_allclose(p.fit_transform({"c": cats}, y3, task="classification").sum(axis=1), 1)
    assert X[0, 0] == pytest.approx(1.0 * 20 / 25 + 5 * (1 / 3) / 25)   # c0 rows are all class 0
    y2 = (y3 == 1).astype(float)
    p2 = Preprocessor([column_kind("c", 25)]).fit({"c": cats}, y2, task="classification")
    assert p2.feature_names() == ["c.target"]
    y20 = np.array([i % 20 for i in range(240)], dtype=float)           # > 10 classes: frequency encoding
    p3 = Preprocessor([column_kind("c", 25)]).fit({"c": cats}, y20, task="classification")
    assert p3.feature_names() == ["c.frequency"]
    np.testing.assert_allclose(p3.transform({"c": ["c1", "new"]})[:, 0], [1 / 12, 0])
    p4 = Preprocessor([column_kind("c", 25)]).fit({"c": cats}, None)     # unsupervised
    assert p4.feature_names() == ["c.frequency"]
    with pytest.raises(PgError, match="needs a label"):
        Preprocessor([column_kind("c", 25)]).fit({"c": cats}, None, spec={"c": ColumnSpec(encode="target")})


def test_ordinal_and_native_encodings():
    k = [column_kind("m", 25)]
    spec = parse_preprocess({"m": {"encode": {"ordinal": ["jan", "feb", "mar"]}}}, ["m"])
    p = Preprocessor(k).fit({"m": ["feb", "jan", None, "mar"]}, None, spec=spec)
    np.testing.assert_array_equal(p.transform({"m": ["jan", "feb", "mar", None, "dec"]})[:, 0], [1, 2, 3, 0, 0])
    with pytest.raises(PgError) as err:
        Preprocessor(k).fit({"m": ["feb", "apr"]}, None, spec=spec)
    assert err.value.sqlstate == "22023" and "'apr'" in err.value.message
    p = Preprocessor(k).fit({"m": ["b", "a", None, "c"]}, None, spec={"m": ColumnSpec(encode="native")})
    np.testing.assert_array_equal(p.transform({"m": ["a", "b", "c", None, "new"]})[:, 0], [0, 1, 2, 3, 4])
    assert p.categorical_features() == [0]


def test_numeric_and_boolean_columns_encoded_as_categories():
    k = [column_kind("n", 23), column_kind("b", 16)]
    spec = parse_preprocess({"n": {"encode": "one_hot"}, "b": {"encode": {"ordinal": [1, 0]}}}, k)
    p = Preprocessor(k).fit({"n": [1, 2, 2, None], "b": [True, False, True, False]}, None, spec=spec)
    assert p.feature_names() == ["n=1", "n=2", "n=NULL", "b"]
    np.testing.assert_array_equal(p.transform({"n": [2, 7], "b": [True, False]}), [[0, 1, 0, 1], [0, 0, 0, 2]])


@pytest.mark.parametrize("impute", ["mode", "mean", "zero"])
def test_categorical_impute(impute):
    k = [column_kind("c", 25)]
    cats = [f"c{i % 12}" for i in range(120)] + ["c0"] * 10 + [None] * 3
    y = np.arange(len(cats), dtype=float)
    p = Preprocessor(k).fit({"c": cats}, y, task="regression", spec={"c": ColumnSpec(impute=impute)})
    table = p.transform({"c": [None, "c0"]})[:, 0]
    train = p.transform({"c": [c for c in cats if c is not None]})[:, 0]
    expected = {"mode": table[1], "mean": train.mean(), "zero": 0.0}[impute]
    assert table[0] == pytest.approx(expected)
    few = Preprocessor(k).fit({"c": ["a", "b", "a", None]}, None, spec={"c": ColumnSpec(impute=impute)})
    assert few.feature_names() == ["c=a", "c=b"]                        # imputed: no NULL column
    assert list(few.transform_row([None])[0]) == {"mode": [1, 0], "mean": [2 / 3, 1 / 3], "zero": [0, 0]}[impute]


def test_one_row_equals_the_same_row_in_a_batch():
    for algorithm in ("ridge", "xgboost"):
        p, cols, _ = fitted(algorithm=algorithm)
        X = p.transform(cols)
        for i in (0, 3, 5, 7, 11, 17):
            row = [cols["x"][i], cols["city"][i], cols["many"][i], cols["ts"][i], cols["b"][i], list(cols["v"][i]),
                   cols["d"][i], cols["tm"][i], cols["iv"][i]]
            row = [None if isinstance(v, float) and np.isnan(v) else v for v in row]
            np.testing.assert_array_equal(p.transform_row(row)[0], X[i])
            one = {name: (values[i:i + 1] if isinstance(values, np.ndarray) else values[i:i + 1])
                   for name, values in cols.items()}
            np.testing.assert_array_equal(p.transform(one)[0], X[i])


def test_pickle_and_json_round_trips():
    spec = parse_preprocess({"city": {"encode": {"ordinal": ["Oslo", "Paris", "Rome", "Zürich"]}, "scale": "robust"},
                             "x": {"impute": "median", "scale": "min_max"}}, kinds())
    for s in (None, spec):
        p, cols, _ = fitted(spec=s, algorithm="svm")
        X = p.transform(cols)
        for q in (pickle.loads(pickle.dumps(p)),
                  Preprocessor.from_json(json.loads(json.dumps(p.to_json(), allow_nan=False)))):
            np.testing.assert_array_equal(q.transform(cols), X)
            assert q.feature_names() == p.feature_names() and q.analysis() == p.analysis()


def test_statistics_come_only_from_the_fit_rows():
    cols, y = data(400)
    train = {k: v[:200] for k, v in cols.items()}
    p = Preprocessor(kinds()).fit(train, y[:200], task="regression", algorithm="ridge")
    q = Preprocessor(kinds()).fit(cols, y, task="regression", algorithm="ridge")
    by = {c["name"]: c for c in p.analysis()["columns"]}
    assert by["x"]["statistics"]["mean"] == pytest.approx(np.nanmean(cols["x"][:200]))
    assert by["x"]["statistics"]["count"] == np.isfinite(cols["x"][:200]).sum()
    # the test rows change nothing: transform of the training rows is exactly standardised
    X = p.transform(train)
    assert abs(X[:, 0].mean()) < 1e-12 and X[:, 0].std() == pytest.approx(1)
    assert not np.allclose(p.transform(cols), q.transform(cols))
    # a category only in the test rows is unknown to the fitted preprocessor
    test = {k: v[200:] for k, v in cols.items()}
    test["city"] = ["only-in-test"] * 200
    names = p.feature_names()
    onehot = [i for i, n in enumerate(names) if n.startswith("city=")]
    assert (p.transform(test)[:, onehot] == 0).all()


def test_input_errors():
    p, cols, _ = fitted()
    with pytest.raises(PgError) as err:
        p.transform({k: v for k, v in cols.items() if k != "ts"})
    assert err.value.sqlstate == "42703" and '"ts"' in err.value.message
    with pytest.raises(PgError, match="takes 9 input values"):
        p.transform_row([1.0])
    row = [1.0, "Paris", "k1", 0.0, True, [1.0, 2.0], 0.0, 0.0, 0.0]
    with pytest.raises(PgError, match="2 elements given"):
        p.transform_row(row)
    row[5] = [1, 2, 3]
    row[0] = "abc"
    with pytest.raises(PgError) as err:
        p.transform_row(row)
    assert err.value.sqlstate == "22P02"
    row[0] = "2.5"                                                       # a number as text is parsed
    assert p.transform_row(row)[0, 0] == 2.5
    with pytest.raises(PgError):
        Preprocessor(kinds()).fit({k: v[:0] for k, v in cols.items()}, None)


def test_decoded_text_columns_are_accepted():
    k = [column_kind("c", 25)]
    col = TextColumn.from_values(["a", None, "b", "a"])
    p = Preprocessor(k).fit({"c": col}, None)
    np.testing.assert_array_equal(p.transform({"c": col}), p.transform({"c": ["a", None, "b", "a"]}))
    assert TextColumn.from_values([True, 3]).tolist() == ["true", "3"]
    assert col[1:].tolist() == [None, "b", "a"] and col[np.array([3, 0])].tolist() == ["a", "a"]
    assert col[col.null].tolist() == [None] and col[2].tolist() == ["b"] and len(col[-1]) == 1


# ---------------------------------------------------------------- labels

def test_infer_task():
    assert infer_task(column_kind("y", 25), 100) == "classification"
    assert infer_task(column_kind("y", 16), 2) == "classification"
    assert infer_task(column_kind("y", 23), 20) == "classification"
    assert infer_task(column_kind("y", 23), 21) == "regression"
    assert infer_task(column_kind("y", 701), 2) == "regression"
    assert infer_task("float", 3) == "regression" and infer_task("text", 3) == "classification"
    with pytest.raises(PgError):
        infer_task(column_kind("y", 1082), 3)


def test_labels_text_boolean_numeric():
    labels = Labels.fit(TextColumn.from_values(["dog", "cat", "émeu", "cat"]), column_kind("y", 25))
    assert labels.classes == ["cat", "dog", "émeu"]
    np.testing.assert_array_equal(labels.encode(["dog", "cat", "émeu", "bird"]), [1, 0, 2, -1])
    assert labels.decode([2, 0]) == ["émeu", "cat"]
    b = Labels.fit(np.array([1.0, 0.0, 1.0]), column_kind("y", 16))
    assert b.classes == [False, True] and b.decode([1]) == [True]
    n = Labels.fit([3, 1, 3, 2.5], "number")
    assert n.classes == [1, 2.5, 3] and n.decode([0, 2]) == [1, 3]
    for lab in (labels, b, n):
        again = pickle.loads(pickle.dumps(lab))
        assert Labels.from_json(json.loads(json.dumps(lab.to_json()))).classes == again.classes == lab.classes
    with pytest.raises(PgError) as err:
        Labels.fit(["a", None], column_kind("y", 25))
    assert err.value.sqlstate == "22004" and '"y"' in err.value.message
    with pytest.raises(PgError):
        labels.decode([3])


def test_fortran_order_and_numeric_inputs():
    p, cols, _ = fitted(algorithm="ridge")
    X = p.transform(cols)
    F_ = p.transform(cols, order="F")
    assert F_.flags.f_contiguous
    np.testing.assert_array_equal(X, F_)
    k = [column_kind("x", 701), column_kind("v", 1021), column_kind("n", 23), column_kind("t", 1184)]
    data_ = {"x": [1.0, None, 3.0], "v": [[1, 2], [3, 4], None], "n": [1, 2, 1], "t": [0.0, 1e9, 2e9]}
    q = Preprocessor(k).fit(data_, None, spec={"n": ColumnSpec(encode="one_hot")}, algorithm="svm")
    assert q.input_names() == ["x", "v[1]", "v[2]", "n", "t"]
    flat = np.array([[1.0, 1, 2, 1, 0.0], [np.nan, 3, 4, 2, 1e9], [3.0, np.nan, np.nan, 1, 2e9]])
    np.testing.assert_array_equal(q.transform_numbers(flat), q.transform(data_))
    np.testing.assert_array_equal(q.transform_numbers(flat[0]), q.transform_row([1.0, [1, 2], 1, 0.0]))
    with pytest.raises(PgError, match="takes 5 input values"):
        q.transform_numbers(flat[:, :3])
    with pytest.raises(PgError) as err:
        p.transform_numbers(np.zeros((1, len(p.input_names()))))
    assert err.value.sqlstate == "42804" and "row" in err.value.hint


def test_bad_ordinal_for_a_number_and_bad_label():
    k = [column_kind("n", 23)]
    with pytest.raises(PgError) as err:
        Preprocessor(k).fit({"n": [1, 2]}, None, spec=parse_preprocess({"n": {"encode": {"ordinal": ["a"]}}}, k))
    assert err.value.sqlstate == "22023" and '"n"' in err.value.message
    with pytest.raises(PgError) as err:
        Preprocessor(k).fit({"n": [1, 2]}, [1.0, np.nan], task="regression")
    assert err.value.sqlstate == "22004"


def test_fit_transform_cross_fits_target_encoding():
    rng = np.random.default_rng(1)
    n = 2000
    noise = [f"id{i}" for i in rng.integers(0, 300, n)]                  # ~7 rows per value, no signal
    y = rng.normal(size=n)
    k = [column_kind("noise", 25), column_kind("x", 701)]
    cols = {"noise": noise, "x": y * 0 + rng.normal(size=n)}
    pre = Preprocessor(k)
    X_cf = pre.fit_transform(cols, y, task="regression", algorithm="xgboost")
    X_in = pre.transform(cols)
    np.testing.assert_array_equal(X_cf[:, 1], X_in[:, 1])                 # no label, no difference
    in_sample = np.corrcoef(X_in[:, 0], y)[0, 1]
    cross = np.corrcoef(X_cf[:, 0], y)[0, 1]
    assert in_sample > 0.3 and abs(cross) < 0.1                          # the leak, and its absence
    again = Preprocessor(k).fit_transform(cols, y, task="regression", algorithm="xgboost")
    np.testing.assert_array_equal(again, X_cf)                           # reproducible
    np.testing.assert_array_equal(Preprocessor(k).fit_transform(cols, y, task="regression", cross_fit=0), X_in)
    p2 = Preprocessor(k).fit(cols, y, task="regression", algorithm="ridge", spec={"noise": ColumnSpec(impute="mean")})
    assert p2.fit_transform(cols, y, task="regression", algorithm="ridge").shape == (n, 2)


def test_statistics_match_numpy():
    x = np.random.default_rng(3).normal(size=1001).round(1)
    x[::10] = np.nan
    s = F._stats(x)
    good = x[np.isfinite(x)]
    np.testing.assert_allclose([s["p25"], s["median"], s["p75"]], np.percentile(good, [25, 50, 75]))
    values, counts = np.unique(good, return_counts=True)
    assert s["mode"] == values[np.argmax(counts)] and s["distinct"] == len(values)
    assert F._stats(np.array([2.0, 2.0]))["histogram"]["counts"][10] == 2
    assert F._stats(np.array([np.nan])) == {"count": 0}


def test_affine_form_and_take_rows():
    from pgml_server.ml.preprocessing import take_rows
    k = [column_kind("x", 701), column_kind("b", 16), column_kind("v", 1021), column_kind("iv", 1186)]
    cols = {"x": np.array([1.0, np.nan, 4.0]), "b": [True, None, False], "v": np.array([[1, 2], [3, np.nan], [5, 6.0]]),
            "iv": [1.0, 2.0, 30.0]}
    for algorithm in ("ridge", "xgboost"):
        p = Preprocessor(k).fit(cols, None, algorithm=algorithm)
        fill, center, spread = p.affine()
        X = np.array([[np.nan, 1, 2, np.inf, 3], [0, np.nan, 1, 1, -np.inf]])
        Xa = np.where(np.isfinite(X), X, fill)
        np.testing.assert_array_equal(p.transform_numbers(X), (Xa - center) / spread)
    assert Preprocessor([column_kind("t", 1184)]).fit({"t": [0.0]}, None).affine() is None
    assert Preprocessor([column_kind("c", 25)]).fit({"c": ["a"]}, None).affine() is None
    part = take_rows({**cols, "c": TextColumn.from_values(["a", "b", None])}, np.array([2, 0]))
    assert part["b"] == [False, True]
    assert part["c"].tolist() == [None, "a"] and part["v"].tolist() == [[5, 6], [1, 2]]


def test_postgresml_shaped_columns():
    spec = parse_preprocess({"city": {"encode": {"ordinal": ["Oslo", "Paris", "Rome", "Zürich"]}}}, kinds())
    p, cols, _ = fitted(spec=spec)
    out = p.postgresml_columns()
    json.dumps(out, allow_nan=False)
    by = {c["name"]: c for c in out}
    x = by["x"]
    assert (x["pg_type"], x["nullable"], x["label"], x["position"], x["size"], x["array"]) == ("float8", True, False, 1,
                                                                                              1, False)
    assert x["preprocessor"] == {"encode": "native", "impute": "mean", "scale": "preserve"}
    assert x["statistics"]["missing"] == 12 and len(x["statistics"]["ventiles"]) == 19
    assert len(x["statistics"]["histogram"]) == 20 and x["statistics"]["variance"] == pytest.approx(
        np.nanvar(cols["x"]))
    assert by["v"]["size"] == 3 and by["v"]["array"]
    city = by["city"]
    assert city["preprocessor"]["encode"] == {"ordinal": ["Oslo", "Paris", "Rome", "Zürich"]}
    cats = city["statistics"]["categories"]
    assert cats["Oslo"]["value"] == 1
    assert cats["__NULL__"] == {"value": 0, "members": sum(c is None for c in cols["city"])}
    assert sum(c["members"] for c in cats.values()) == 200
    many = by["many"]["statistics"]["categories"]
    assert sum(c["members"] for c in many.values()) <= 200 and by["many"]["preprocessor"]["encode"] == "target"
