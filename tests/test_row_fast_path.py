"""The compiled one-row path (preprocessing/rows.py) gives exactly transform_row's values, for every
column kind, encoding, scaling, imputation, NULLs, unseen categories and temporal subkind; what it
does not cover (arrays, errors, odd inputs) is answered by transform_row itself."""
from __future__ import annotations

import datetime as dt
import decimal
import pickle

import numpy as np
import pytest

from protocol.errors import PgError
from pgml_server.ml.model import ModelBundle, ModelInputs
from pgml_server.ml.preprocessing import ColumnSpec, Preprocessor, column_kind
from pgml_server.ml.preprocessing.rows import compile_row

N = 600
rng = np.random.default_rng(7)

KINDS = [
    column_kind("num", 701), column_kind("count", 23), column_kind("flag", 16),
    column_kind("city", 25),            # ≤ 10 values: one-hot (with NULLs: a NULL column)
    column_kind("shop", 25),            # many values: target (rare ones pooled as unknown)
    column_kind("plan", 25),            # ordinal in the spec tests
    column_kind("ts", 1114), column_kind("tstz", 1184), column_kind("day", 1082),
    column_kind("at", 1083), column_kind("attz", 1266), column_kind("span", 1186),
    column_kind("grade", 23),           # a number encoded as a category in the spec tests
]
CITIES = ["Paris", "Lyon", "Nice", "", "Zürich", "a\u00e9b"]
PLANS = ["starter", "growth", "scale"]


def _with_nulls(values, share=0.05):
    return [None if rng.random() < share else v for v in values]


def _columns():
    num = rng.normal(10, 3, N)
    num[rng.random(N) < 0.05] = np.nan
    num[3] = np.inf
    epochs = rng.uniform(-3e9, 3e9, N)
    return {
        "num": num,
        "count": _with_nulls(rng.integers(0, 50, N).tolist()),
        "flag": _with_nulls([bool(b) for b in rng.integers(0, 2, N)]),
        "city": _with_nulls([CITIES[i] for i in rng.integers(0, len(CITIES), N)]),
        "shop": _with_nulls([f"shop-{i}" for i in rng.integers(0, 80, N)]),
        "plan": _with_nulls([PLANS[i] for i in rng.integers(0, 3, N)]),
        "ts": _with_nulls(epochs.tolist()),
        "tstz": _with_nulls((epochs + 0.5).tolist()),
        "day": _with_nulls((np.floor(epochs / 86400) * 86400).tolist()),
        "at": _with_nulls(rng.uniform(0, 86400, N).tolist()),
        "attz": _with_nulls(rng.uniform(-7200, 86400, N).tolist()),
        "span": _with_nulls(rng.uniform(0, 1e7, N).tolist()),
        "grade": _with_nulls(rng.integers(1, 6, N).tolist()),
    }


COLUMNS = _columns()
Y_REG = rng.normal(0, 1, N)
Y_CLASS3 = rng.integers(0, 3, N).astype(np.float64)
Y_CLASS2 = rng.integers(0, 2, N).astype(np.float64)

SPEC_EXPLICIT = {
    "num": ColumnSpec(impute="median", scale="robust"), "count": ColumnSpec(impute="zero", scale="min_max"),
    "city": ColumnSpec(encode="target", impute="mode"), "shop": ColumnSpec(encode="one_hot"),
    "plan": ColumnSpec(encode="ordinal", ordinal=tuple(PLANS)), "grade": ColumnSpec(encode="one_hot"),
    "ts": ColumnSpec(impute="max", scale="max_abs"), "span": ColumnSpec(impute="min"),
    "day": ColumnSpec(scale="standard"), "flag": ColumnSpec(encode="native"),
}
SPEC_NATIVE = {"city": ColumnSpec(encode="native"), "shop": ColumnSpec(encode="native", impute="mean"),
               "grade": ColumnSpec(encode="target")}

CASES = {
    "lightgbm-regression": (Y_REG, "regression", "lightgbm", None),
    "linear-scaled": (Y_REG, "regression", "linear", None),
    "multiclass-target": (Y_CLASS3, "classification", "logistic", None),
    "binary-target": (Y_CLASS2, "classification", "random_forest", None),
    "unsupervised-frequency": (None, None, "kmeans", None),
    "explicit": (Y_REG, "regression", "linear", SPEC_EXPLICIT),
    "explicit-unscaled": (Y_REG, "regression", "lightgbm", SPEC_EXPLICIT),
    "native": (Y_REG, "regression", "lightgbm", SPEC_NATIVE),
}


def _fitted(case: str) -> Preprocessor:
    y, task, algorithm, spec = CASES[case]
    return Preprocessor(KINDS).fit(COLUMNS, y, task=task, algorithm=algorithm, spec=spec)


def _rows():
    """Training rows, NULL everywhere, unseen and odd values, and Python value types of every kind."""
    names = [k.name for k in KINDS]
    out = [[COLUMNS[n][i] if not isinstance(COLUMNS[n], np.ndarray) else float(COLUMNS[n][i]) for n in names]
           for i in range(0, N, 7)]
    out.append([None] * len(KINDS))
    out.append([float("nan"), None, None, "Atlantis", "never-seen", "platinum", float("inf"), float("-inf"),
                None, None, None, None, 99])
    out.append([np.float64(2.5), True, "true", 5, 1.5, True, dt.datetime(2024, 2, 29, 23, 59, 59, 999999),
                dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=-5))), dt.date(1969, 12, 31),
                dt.time(13, 30), dt.time(1, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
                dt.timedelta(days=-3, seconds=5), decimal.Decimal("3")])
    out.append(["7.25", decimal.Decimal("1.5"), "off", b"Paris", "shop-1\x00", "growth", 0.0, -0.0, -86400.0,
                0, -1, -1e9, 3.0])
    out.append([-0.0, 10**6, 0, "Paris\x00\x00", "", "scale", -1.0, 86399.999, 1e12, 86400, 0.5, 0, -0.0])
    out.append([1e308, -5, 1, "Lyon", "shop-2", "starter", -62135596800.0, 253402300799.0, 1e14, 1, 2, 3, 2])
    out.append([None, None, None, "x" * 2000, "y" * 1500, None, -1e15, 5e15, None, None, None, None, None])
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_fast_row_equals_transform_row(case):
    pre = _fitted(case)
    slow_calls = []
    pre.transform_row = lambda values, slow=pre.transform_row: (slow_calls.append(values), slow(values))[1]
    row = compile_row(pre)
    assert row is not None
    for values in _rows():
        expected = pre.transform_row(values)
        slow_calls.clear()
        got = row(values)
        # only the row with text over decode.MAX_TEXT_WIDTH bytes is left to transform_row
        assert len(slow_calls) == (1 if isinstance(values[3], str) and len(values[3]) > 1024 else 0), values
        assert got.dtype == np.float64 and got.shape == expected.shape == (1, pre.num_features)
        assert got.tobytes() == expected.tobytes(), (case, values, got, expected)
        assert np.array_equal(got, expected, equal_nan=True)
    # and the same after the registry's round trip (pickle = the JSON form)
    again = pickle.loads(pickle.dumps(pre))
    row2 = compile_row(again)
    for values in _rows()[-8:]:
        assert row2(values).tobytes() == pre.transform_row(values).tobytes()


def test_calendar_parts_on_many_epochs():
    kinds = [column_kind("ts", 1114), column_kind("d", 1082), column_kind("tz", 1184)]
    epochs = np.concatenate([rng.uniform(-6e10, 2.5e11, 3000), np.arange(-200, 200) * 3600.0,
                             np.arange(-50, 50) * 86400.0 - 0.25, [-62135596800.0, 253402300799.999]])
    cols = {"ts": epochs, "d": np.floor(epochs / 86400) * 86400, "tz": epochs[::-1].copy()}
    for algorithm in ("lightgbm", "linear"):
        pre = Preprocessor(kinds).fit(cols, rng.normal(size=len(epochs)), task="regression", algorithm=algorithm)
        row = compile_row(pre)
        X = pre.transform(cols)
        for i in range(len(epochs)):
            got = row([float(cols["ts"][i]), float(cols["d"][i]), float(cols["tz"][i])])
            assert got.tobytes() == X[i:i + 1].tobytes(), (epochs[i], got, X[i])


def test_errors_and_uncovered_inputs_are_transform_rows():
    pre = Preprocessor([column_kind("x", 701), column_kind("c", 25)]).fit(
        {"x": [1.0, 2.0, 3.0] * 10, "c": ["a", "b", "c"] * 10}, np.arange(30.0), task="regression",
        algorithm="linear", spec={"x": ColumnSpec(impute="error"), "c": ColumnSpec(impute="error")})
    row = compile_row(pre)
    for bad in ([None, "a"], [1.0, None], ["nope", "a"], [1.0], [1.0, "a", 3], [object(), "a"]):
        with pytest.raises(PgError) as slow:
            pre.transform_row(bad)
        with pytest.raises(PgError) as fast:
            row(bad)
        assert (fast.value.sqlstate, fast.value.message) == (slow.value.sqlstate, slow.value.message)
    temporal = Preprocessor([column_kind("t", 1114)]).fit({"t": [0.0, 86400.0] * 5})
    with pytest.raises(PgError) as err:
        compile_row(temporal)(["2024-01-01"])
    assert err.value.sqlstate == "42804"


def test_array_columns_are_not_compiled_and_model_inputs_fall_back():
    kinds = [column_kind("x", 701), column_kind("v", 1022)]
    pre = Preprocessor(kinds).fit({"x": [1.0, 2.0, None] * 4, "v": [[1, 2], [3, 4], None] * 4})
    assert compile_row(pre) is None
    inputs = ModelInputs(ModelBundle(b"", pre))
    np.testing.assert_array_equal(inputs.from_row((1.5, [1, None])), pre.transform_row([1.5, [1, None]]))


def test_model_inputs_from_row_uses_the_compiled_row_and_parses_temporal_text():
    pre = _fitted("lightgbm-regression")
    inputs = ModelInputs(ModelBundle(b"", pre))
    assert inputs.row is not pre.transform_row
    values = (1.0, 2, True, "Paris", "shop-3", "growth", "2024-03-01 10:00:00", "2024-03-01 10:00:00+02",
              "2024-03-01", "10:00:00", "10:00:00+02", "1 day 02:00:00", 3)
    got = inputs.from_row(values)
    converted = list(values)
    from pgml_server.ml.temporal import epoch_of_text
    for i, k in enumerate(KINDS):
        if k.kind == "temporal":
            converted[i] = epoch_of_text(k.subkind, values[i])
    assert got.tobytes() == pre.transform_row(converted).tobytes()
    assert inputs.from_row(tuple(converted)).tobytes() == got.tobytes()


@pytest.mark.parametrize("case", sorted(CASES))
def test_canonical_rows_hash_to_code_equals_the_words_path(case):
    """from_canonical maps a text column's hashes straight to codes and table rows; the result is the
    one of the words' path (hash → category text → Preprocessor.transform), NULLs and unseen too."""
    from pgml_server.ml.model import categorical_vocabularies
    pre = _fitted(case)
    hashes = {name: list(rng.permutation(len(words)) * 7.0 + 3.0) for name, words in categorical_vocabularies(pre).items()}
    inputs = ModelInputs(ModelBundle(b"", pre, None, hashes))
    assert inputs.direct is not None
    n = 500
    X = np.empty((n, len(KINDS)))
    for i, k in enumerate(KINDS):
        if k.name in hashes:
            known = np.asarray(hashes[k.name])
            X[:, i] = known[rng.integers(0, len(known), n)] if len(known) else 1.0
            X[rng.random(n) < 0.1, i] = 12345.5             # a hash no category has: unknown
        else:
            X[:, i] = rng.normal(5, 3, n) if k.kind != "temporal" else rng.uniform(-2e9, 2e9, n)
        X[rng.random(n) < 0.1, i] = np.nan                   # NULL
    X[:, KINDS.index(column_kind("flag", 16))] = np.where(np.isnan(X[:, 2]), np.nan, X[:, 2] > 5)
    direct = inputs.from_canonical(X)
    inputs.direct = None
    words = inputs.from_canonical(X)
    assert direct.tobytes() == words.tobytes()
