"""Toy datasets: PostgresML's table layouts, and DDL + COPY text that a real PostgreSQL accepts."""
import asyncio
import io

import asyncpg
import numpy as np
import pytest
from sklearn import datasets as sk

from pgml_server.ml import datasets
from pgml_server.ml.training import TrainingError

DATABASE = "pgml_datasets_test"


@pytest.fixture(scope="module")
def db(upstream_dsn):
    """run(coroutine_fn) on a connection to a database of this module's own (other tests use pgml.* too)."""
    loop = asyncio.new_event_loop()
    admin = loop.run_until_complete(asyncpg.connect(upstream_dsn))
    loop.run_until_complete(admin.execute(f"DROP DATABASE IF EXISTS {DATABASE}"))
    loop.run_until_complete(admin.execute(f"CREATE DATABASE {DATABASE}"))
    conn = loop.run_until_complete(asyncpg.connect(upstream_dsn.rsplit("/", 1)[0] + f"/{DATABASE}"))
    loop.run_until_complete(conn.execute("CREATE SCHEMA pgml"))
    yield lambda fn: loop.run_until_complete(fn(conn))
    loop.run_until_complete(conn.close())
    loop.run_until_complete(admin.execute(f"DROP DATABASE {DATABASE}"))
    loop.run_until_complete(admin.close())
    loop.close()


def _load(db, ds, limit=None):
    async def load(conn):
        await conn.execute(datasets.create_table_sql(ds))
        payload = datasets.copy_payload(ds, limit=limit)
        await conn.copy_to_table(ds.table.split(".")[1], schema_name="pgml", source=io.BytesIO(payload),
                                 columns=[c for c, _ in ds.columns], format="text")
        return await conn.fetch(f"SELECT * FROM {ds.table}")
    return db(load)


@pytest.mark.parametrize("name", datasets.AVAILABLE)
def test_every_dataset_loads_into_postgres(db, name):
    ds = datasets.get_dataset(name)
    rows = _load(db, ds)
    assert len(rows) == ds.num_rows > 0 and list(rows[0].keys()) == [c for c, _ in ds.columns]


def test_diabetes_layout_and_values(db):
    ds = datasets.get_dataset("diabetes")
    assert ds.table == "pgml.diabetes"
    assert ds.columns == [(c, "float4") for c in ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]] \
        + [("target", "int4")]
    rows = _load(db, ds)
    bunch = sk.load_diabetes()
    assert [r["target"] for r in rows] == bunch.target.astype(int).tolist()
    assert np.allclose([r["bmi"] for r in rows], bunch.data[:, 2], rtol=1e-6)


def test_iris_and_wine_column_names():
    assert [c for c, _ in datasets.get_dataset("iris").columns] == \
        ["sepal_length", "sepal_width", "petal_length", "petal_width", "target"]
    wine = [c for c, _ in datasets.get_dataset("wine").columns]
    assert len(wine) == 14 and "od280_od315_of_diluted_wines" in wine and wine[-1] == "target"


def test_breast_cancer_malignant_is_sklearn_target_zero(db):
    ds = datasets.get_dataset("breast_cancer")
    names = [c for c, _ in ds.columns]
    assert names[0] == "mean_radius" and names[29] == "worst_fractal_dimension" and ds.columns[30] == ("malignant", "bool")
    rows = _load(db, ds)
    assert [r["malignant"] for r in rows] == (sk.load_breast_cancer().target == 0).tolist()


def test_digits_images_are_8x8_arrays(db):
    rows = _load(db, datasets.get_dataset("digits"), limit=5)
    images = sk.load_digits().images
    assert len(rows) == 5
    assert [[list(line) for line in r["image"]] for r in rows] == images[:5].astype(int).tolist()


def test_linnerud_has_exercise_and_physiology_columns(db):
    ds = datasets.get_dataset("linnerud")
    assert [c for c, _ in ds.columns] == ["chins", "situps", "jumps", "weight", "waist", "pulse"]
    rows = _load(db, ds)
    assert [r["pulse"] for r in rows] == sk.load_linnerud().target[:, 2].tolist()


def test_limit():
    ds = datasets.get_dataset("iris")
    assert datasets.copy_payload(ds, limit=3).count(b"\n") == 3
    assert datasets.copy_payload(ds, limit=0) == b""
    assert datasets.copy_payload(ds, limit=10_000).count(b"\n") == 150


def test_unknown_dataset_lists_the_available_ones():
    with pytest.raises(TrainingError) as err:
        datasets.get_dataset("titanic")
    assert err.value.sqlstate == "22023" and "titanic" in err.value.message
    assert err.value.hint == "available datasets: diabetes, iris, breast_cancer, digits, wine, linnerud"


def test_identifiers_are_quoted():
    ds = datasets.Dataset("pgml.Odd Table", [("Select", "int4"), ("plain", "float4")],
                          [np.array([1]), np.array([2.5])])
    sql = datasets.create_table_sql(ds)
    assert sql == 'DROP TABLE IF EXISTS pgml."Odd Table";\nCREATE TABLE pgml."Odd Table" ("Select" int4, plain float4);'
    assert datasets.copy_payload(ds) == b"1\t2.5\n"
