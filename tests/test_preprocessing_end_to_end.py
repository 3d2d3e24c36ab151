"""The whole data path on a real table: kinds → canonical COPY → decode → fit on the training rows → a model."""
from __future__ import annotations

import numpy as np
import psycopg
import pytest

from pgml_server.ml.preprocessing import Labels, Preprocessor, decode_copy, infer_task, parse_preprocess
from pgml_server.ml.preprocessing.sql import RELATION_COLUMNS_SQL, copy_query, kinds_from_rows, wire_types

TABLE = """
DROP TABLE IF EXISTS pp_house;
CREATE TABLE pp_house AS
SELECT g AS id,
       (50 + (g * 37) % 200)::numeric(8,1) AS area,
       CASE WHEN g % 9 = 0 THEN NULL ELSE (g % 5) END::int2 AS rooms,
       (g % 3 = 0) AS garden,
       (ARRAY['north', 'south', 'east', 'west', NULL])[1 + g % 5]::varchar(8) AS side,
       'street ' || (g % 40) AS street,
       timestamptz '2020-01-01 00:00+00' + (g * interval '17 hours') AS listed,
       ARRAY[(g % 7)::real, (g % 11)::real] AS scores,
       CASE WHEN g % 4 = 0 THEN 'cheap' WHEN g % 4 = 1 THEN 'fair' ELSE 'dear' END AS band,
       (1000 * (50 + (g * 37) % 200) + 5000 * (g % 3 = 0)::int + 100 * (g % 40))::float8 AS price
FROM generate_series(1, 600) g;
"""


@pytest.fixture(scope="module")
def snapshot(upstream):
    with psycopg.connect(upstream.dsn, autocommit=True) as conn:
        conn.execute(TABLE)
        rows = conn.execute(RELATION_COLUMNS_SQL.replace("$1", "%s"), ("pp_house",)).fetchall()
        kinds = kinds_from_rows(rows, exclude=["id"])
        with conn.cursor().copy(copy_query("pp_house", kinds, order_by="s.id")) as copy:
            data = b"".join(bytes(b) for b in copy)
    names = [k.name for k in kinds]
    return kinds, dict(zip(names, decode_copy(data, wire_types(kinds), names)))


def split(cols, n_train):
    return ({k: v[:n_train] for k, v in cols.items()}, {k: v[n_train:] for k, v in cols.items()})


def test_regression_on_a_real_table(snapshot):
    from sklearn.linear_model import Ridge
    kinds, cols = snapshot
    label = next(k for k in kinds if k.name == "price")
    features = [k for k in kinds if k.name not in ("price", "band")]
    assert infer_task(label, 600) == "regression"
    train, test = split({k.name: cols[k.name] for k in features}, 450)
    y = cols["price"]
    spec = parse_preprocess({"area": {"scale": "robust"}, "rooms": {"impute": "median"}}, features)
    pre = Preprocessor(features).fit(train, y[:450], task="regression", algorithm="ridge", spec=spec)
    assert "street.target" in pre.feature_names() and "side=NULL" in pre.feature_names()
    assert "listed.hour" in pre.feature_names() and "scores[2]" in pre.feature_names()
    model = Ridge(alpha=1.0).fit(pre.transform(train), y[:450])
    predicted = model.predict(pre.transform(test))
    r2 = 1 - ((predicted - y[450:]) ** 2).sum() / ((y[450:] - y[450:].mean()) ** 2).sum()
    assert r2 > 0.9
    # a predict-time row of Python values gives the batch's prediction exactly
    row = [cols[k.name].tolist()[460] if hasattr(cols[k.name], "null") else cols[k.name][460] for k in features]
    row = [None if isinstance(v, float) and np.isnan(v) else (list(v) if isinstance(v, np.ndarray) else v) for v in row]
    assert model.predict(pre.transform_row(row))[0] == predicted[10]


def test_classification_with_a_text_label(snapshot):
    from sklearn.ensemble import RandomForestClassifier
    kinds, cols = snapshot
    label = next(k for k in kinds if k.name == "band")
    features = [k for k in kinds if k.name not in ("price", "band")]
    assert infer_task(label, 3) == "classification"
    labels = Labels.fit(cols["band"], label)
    assert labels.classes == ["cheap", "dear", "fair"]
    y = labels.encode(cols["band"])
    train, test = split({k.name: cols[k.name] for k in features}, 450)
    pre = Preprocessor(features).fit(train, y[:450], task="classification", algorithm="random_forest")
    model = RandomForestClassifier(n_estimators=20, random_state=0).fit(pre.transform(train), y[:450])
    decoded = labels.decode(model.predict(pre.transform(test)))
    assert set(decoded) <= set(labels.classes)
    importance = {}
    for source, value in zip(pre.feature_sources(), model.feature_importances_):
        importance[source] = importance.get(source, 0) + value
    assert set(importance) == {k.name for k in features} and sum(importance.values()) == pytest.approx(1)
