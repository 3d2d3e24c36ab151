"""PostgresML's toy datasets, built from the data scikit-learn ships (no network needed).

`pgml.load_dataset('iris')` creates `pgml.iris` in the upstream and fills it with COPY. This module
only builds what that needs: the table layout as PostgresML defines it (`create_table_sql`) and
the rows in COPY text format (`copy_payload`); running them is the SQL function's job.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..db.names import quote_ident
from .training import TrainingError

SCHEMA = "pgml"


@dataclass(frozen=True)
class Dataset:
    """One toy table: its qualified name, (column, SQL type) pairs and one value array per column."""
    table: str                          # e.g. 'pgml.iris'
    columns: list[tuple[str, str]]
    values: list[np.ndarray]

    @property
    def num_rows(self) -> int:
        return len(self.values[0]) if self.values else 0


def snake_case(name: str) -> str:
    """'mean concave points' → 'mean_concave_points'; 'od280/od315_of_diluted_wines' → 'od280_od315_of_diluted_wines'."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _sklearn(loader: str):
    from sklearn import datasets
    return getattr(datasets, loader)()


def _diabetes() -> Dataset:
    bunch = _sklearn("load_diabetes")
    names = list(bunch.feature_names)
    return _table("diabetes", [(n, "float4") for n in names] + [("target", "int4")],
                  [*bunch.data.T, bunch.target.astype(np.int64)])


def _iris() -> Dataset:
    bunch = _sklearn("load_iris")
    names = [snake_case(n.replace("(cm)", "")) for n in bunch.feature_names]  # sepal_length, …
    return _table("iris", [(n, "float4") for n in names] + [("target", "int4")], [*bunch.data.T, bunch.target])


def _breast_cancer() -> Dataset:
    bunch = _sklearn("load_breast_cancer")
    names = [snake_case(n) for n in bunch.feature_names]
    # scikit-learn's target 0 is 'malignant' (target_names[0]).
    return _table("breast_cancer", [(n, "float4") for n in names] + [("malignant", "bool")],
                  [*bunch.data.T, bunch.target == 0])


def _digits() -> Dataset:
    bunch = _sklearn("load_digits")
    return _table("digits", [("image", "smallint[][]"), ("target", "int4")],
                  [bunch.images.astype(np.int16), bunch.target])


def _wine() -> Dataset:
    bunch = _sklearn("load_wine")
    names = [snake_case(n) for n in bunch.feature_names]
    return _table("wine", [(n, "float4") for n in names] + [("target", "int4")], [*bunch.data.T, bunch.target])


def _linnerud() -> Dataset:
    bunch = _sklearn("load_linnerud")
    names = [snake_case(n) for n in [*bunch.feature_names, *bunch.target_names]]
    return _table("linnerud", [(n, "float4") for n in names], [*bunch.data.T, *bunch.target.T])


def _table(name: str, columns: list[tuple[str, str]], values: list[np.ndarray]) -> Dataset:
    return Dataset(f"{SCHEMA}.{name}", columns, [np.asarray(v) for v in values])


LOADERS: dict[str, Callable[[], Dataset]] = {
    "diabetes": _diabetes, "iris": _iris, "breast_cancer": _breast_cancer,
    "digits": _digits, "wine": _wine, "linnerud": _linnerud,
}
AVAILABLE = list(LOADERS)


def get_dataset(name: str) -> Dataset:
    """The dataset called `name`; TrainingError 22023 listing the available ones otherwise."""
    loader = LOADERS.get((name or "").strip().lower())
    if loader is None:
        raise TrainingError("22023", f"unknown dataset {name!r}", hint="available datasets: " + ", ".join(AVAILABLE))
    return loader()


def qualified_table(ds: Dataset) -> str:
    schema, table = ds.table.split(".", 1)
    return f"{quote_ident(schema)}.{quote_ident(table)}"


def create_table_sql(ds: Dataset) -> str:
    """DROP TABLE IF EXISTS and CREATE TABLE for `ds`: two statements separated by ';'."""
    table = qualified_table(ds)
    columns = ", ".join(f"{quote_ident(name)} {sql_type}" for name, sql_type in ds.columns)
    return f"DROP TABLE IF EXISTS {table};\nCREATE TABLE {table} ({columns});"


def copy_payload(ds: Dataset, limit: int | None = None) -> bytes:
    """The first `limit` rows (all when None) in COPY text format, columns in `ds.columns` order."""
    rows = ds.num_rows if limit is None else max(0, min(int(limit), ds.num_rows))
    texts = [_column_text(values[:rows]) for values in ds.values]
    return "".join("\t".join(fields) + "\n" for fields in zip(*texts)).encode()


def _column_text(values: np.ndarray) -> list[str]:
    """Each value as COPY text: numbers in shortest round-trip form, booleans t/f, arrays {…}."""
    if values.ndim > 1:
        return [_array_literal(v) for v in values]
    if values.dtype == bool:
        return ["t" if v else "f" for v in values]
    if values.dtype.kind in "iu":
        return [str(int(v)) for v in values]
    return [repr(float(v)) for v in values]


def _array_literal(values: np.ndarray) -> str:
    if values.ndim == 1:
        return "{" + ",".join(_column_text(values)) + "}"
    return "{" + ",".join(_array_literal(v) for v in values) + "}"
