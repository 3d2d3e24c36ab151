"""The Preprocessor: fitted on the training rows, it turns decoded columns into one float64 matrix.

Automatic choices (a column named in `preprocess` overrides only the keys it names):

- numeric: NULL/NaN/±Infinity are missing, imputed with the training mean.
- boolean: 0/1; missing imputed with the mode.
- categorical: NULL is its own category. ≤ ONE_HOT_LIMIT (10) distinct training values: one-hot
  (one column per value, plus `col=NULL` when training had NULLs; not dummy-dropped, unlike
  PostgresML, so every value keeps its own column). More: target encoding, the smoothed mean of
  y per category, (n_c·mean_c + SMOOTHING·prior) / (n_c + SMOOTHING) with SMOOTHING = 5; for
  multiclass one such column per class (P(class | category)) up to MULTICLASS_TARGET_LIMIT (10)
  classes, frequency encoding (share of training rows) beyond that or without a label
  (unsupervised). Categories seen fewer than MIN_FREQUENCY (5) times in training go to the
  "unknown" slot, which unseen values at predict time also map to (its value: the pooled rare
  rows' statistic, or the prior when there were none; for one-hot an all-zero row).
- temporal: epoch seconds (mean-imputed), and for timestamp/timestamptz/date the calendar parts
  day of week (0 = Sunday, as PostgreSQL's dow), month (1-12), day of month and, except for
  date, hour, computed in UTC from the imputed epoch. time/timetz/interval: seconds only.
- array: one feature per element, each imputed with its own mean.
- scaling: standard when `needs_scaling(algorithm)` (linear models, SVMs, kernel ridge, Gaussian
  processes, k-NN, MLP, clustering, decomposition), else none; never for trees/boosting; one-hot
  columns are never scaled. A constant feature is centred but not divided (scale 1).

Explicit options: impute mean|median|mode|min|max|zero|error — for categorical columns `mode` maps
NULL to the most frequent category, the others replace the encoded value of NULL rows by that
statistic of the encoded training values, and without `impute` NULL stays its own category.
`error` raises 22004 when the training rows (or, later, a row to transform) have a missing value.
encode native (numbers as they are; a category's index in the sorted vocabulary, NULL and unknown
the next two indices), target, one_hot (no frequency cut-off), ordinal (position + 1 in the given
list, NULL and unknown 0; a training value not in the list is 22023). Numeric and boolean columns
can be encoded as categories too (their distinct values are the categories). Statistics for
imputing and scaling come from the rows given to `fit` only; scaling statistics are taken after
imputing and encoding, so the training matrix is exactly standardised.

Target encoding leaks a row's own label into its feature when a table fitted on the training rows
encodes those same rows. `fit_transform` therefore cross-fits: each training row's target features
come from a table fitted on the other CROSS_FIT_FOLDS - 1 folds (seeded, so reproducible); test
and predict rows use the table fitted on all training rows (`transform`). Train the model on
fit_transform's matrix, score it on transform's.
"""
from __future__ import annotations

import datetime as _dt
import math
from typing import Any, Mapping, Sequence

import numpy as np

from protocol import sqlstate
from protocol.errors import PgError

from .columns import ARRAY, BOOLEAN, CATEGORICAL, TEMPORAL, ColumnKind
from .decode import TextColumn
from .spec import ColumnSpec

ONE_HOT_LIMIT = 10
MIN_FREQUENCY = 5
SMOOTHING = 5.0
MULTICLASS_TARGET_LIMIT = 10
CROSS_FIT_FOLDS = 5          # out-of-fold target encoding of the training matrix (fit_transform)
TOP_CATEGORIES = 20          # categories listed in analysis()
HISTOGRAM_BINS = 20          # equal-width bins of numeric statistics (dashboard, drift)
VERSION = 1

_SCALED_ALGORITHMS = {
    "linear", "ridge", "lasso", "elastic_net", "least_angle", "lasso_least_angle", "orthogonal_matching_pursuit",
    "bayesian_ridge", "automatic_relevance_determination", "stochastic_gradient_descent", "perceptron",
    "passive_aggressive", "ransac", "theil_sen", "huber", "quantile", "logistic", "logistic_regression",
    "svm", "nu_svm", "linear_svm", "kernel_ridge", "gaussian_process", "knn", "k_nearest_neighbors",
    "kneighbors", "nearest_neighbors", "mlp", "neural_network", "multilayer_perceptron",
    "kmeans", "k_means", "mini_batch_kmeans", "affinity_propagation", "birch", "dbscan", "hdbscan",
    "optics", "mean_shift", "spectral", "spectral_clustering", "agglomerative", "feature_agglomeration",
    # (not nmf: it factorises non-negative data, which standard scaling would make negative)
    "pca", "incremental_pca", "kernel_pca", "truncated_svd", "fast_ica", "ica", "factor_analysis",
    "dictionary_learning", "sparse_pca", "lda", "linear_discriminant_analysis", "qda",
}
_CALENDAR = {"timestamp": ("dow", "month", "day", "hour"), "timestamptz": ("dow", "month", "day", "hour"),
             "date": ("dow", "month", "day")}


def needs_scaling(algorithm: str | None) -> bool:
    """Whether an algorithm is sensitive to feature scale (so standard scaling is the default)."""
    return bool(algorithm) and algorithm.strip().lower().replace("-", "_") in _SCALED_ALGORITHMS


# ---------------------------------------------------------------- the preprocessor

class Preprocessor:
    """Fit with `fit(columns, y, …)`, then `transform(columns)` / `transform_row(values)` → (n, f) float64."""

    def __init__(self, kinds: Sequence[ColumnKind], *, one_hot_limit: int = ONE_HOT_LIMIT,
                 min_frequency: int = MIN_FREQUENCY, smoothing: float = SMOOTHING):
        if len({k.name for k in kinds}) != len(kinds):
            raise ValueError("duplicate column names")
        self.kinds = list(kinds)
        self.settings = {"one_hot_limit": int(one_hot_limit), "min_frequency": int(min_frequency),
                         "smoothing": float(smoothing), "multiclass_target_limit": MULTICLASS_TARGET_LIMIT}
        self._columns: list[_Column] = []
        self.task: str | None = None
        self.algorithm: str | None = None
        self.rows = 0

    # ------------------------------------------------------------ fitting

    def fit(self, columns: Mapping[str, Any], y=None, *, task: str | None = None, algorithm: str | None = None,
            spec: Mapping[str, ColumnSpec] | None = None) -> "Preprocessor":
        """Learn every column's statistics and encoding from the TRAINING rows only.

        `columns`: name → decoded values (decode.decode_copy output, or Python lists); `y`: the
        label (regression: numbers; classification: class indices 0..C-1, see labels.Labels;
        2-D for joint regression, the first column is used; None when unsupervised).
        """
        spec = dict(spec or {})
        unknown = set(spec) - {k.name for k in self.kinds}
        if unknown:
            raise PgError(sqlstate.INVALID_PARAMETER_VALUE, f'preprocess names unknown column "{sorted(unknown)[0]}"')
        self.task, self.algorithm = task, algorithm
        data = self._inputs(columns)
        n = _rows(data, self.kinds)
        if n == 0:
            raise PgError(sqlstate.INVALID_PARAMETER_VALUE, "there are no training rows to fit the preprocessing on")
        target = _target(y, n, task, self.settings)
        scale_default = "standard" if needs_scaling(algorithm) else "preserve"
        fitted = []
        for kind, values in zip(self.kinds, data):
            col_spec = spec.get(kind.name, ColumnSpec())
            if kind.kind == CATEGORICAL or col_spec.encode not in (None, "native"):
                col: _Column = _Categorical(kind, col_spec, self.settings)
            else:
                col = _Numeric(kind, col_spec)
            col.fit(values, target, scale_default)
            fitted.append(col)
        self._columns = fitted
        self.rows = n
        return self

    # ------------------------------------------------------------ transforming

    def transform(self, columns: Mapping[str, Any], order: str = "C") -> np.ndarray:
        """The feature matrix (n, num_features) of decoded columns (any rows: training, test or predict).

        order="F" returns a Fortran-ordered matrix, filled without the strided column writes a
        C-ordered one needs (1M rows × 19 features: ~0.05 s instead of ~0.25 s of the copy); the
        values are identical.
        """
        self._check_fitted()
        data = self._inputs(columns)
        return self._assemble([col.transform(values) for col, values in zip(self._columns, data)],
                              _rows(data, self.kinds), order)

    def _assemble(self, blocks: list[np.ndarray], n: int, order: str) -> np.ndarray:
        out = np.empty((self.num_features, n), dtype=np.float64) if order == "F" else \
            np.empty((n, self.num_features), dtype=np.float64)
        at = 0
        for block in blocks:
            width = block.shape[1]
            if order == "F":
                out[at:at + width] = block.T
            else:
                out[:, at:at + width] = block
            at += width
        return out.T if order == "F" else out

    def affine(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(fill, center, spread) when the features are the flat numeric inputs imputed and scaled
        elementwise — every column numeric, boolean, time/timetz/interval or an array, none
        encoded as a category, no calendar parts, no impute "error" — else None. Then
        transform_numbers(X) == (where(isnan(X), fill, X) - center) / spread exactly (±Infinity
        counts as missing too), which a compiled plan can apply (or fold into linear weights)
        without calling the preprocessor; with no scaling center is 0 and spread 1."""
        fill, center, spread = [], [], []
        for c in self._columns:
            if not isinstance(c, _Numeric) or c.parts or c.impute == "error":
                return None
            fill += c.fill
            center += c.center if c.scale != "preserve" else [0.0] * len(c.features)
            spread += c.spread if c.scale != "preserve" else [1.0] * len(c.features)
        return np.array(fill, dtype=np.float64), np.array(center, dtype=np.float64), np.array(spread, dtype=np.float64)

    def input_names(self) -> list[str]:
        """The inputs of a flat numeric feature array, in order: one per column, k per array column (v[1]…)."""
        return [n for c in self._columns for n in c.inputs()]

    def transform_numbers(self, X) -> np.ndarray:
        """A numeric matrix (n, len(input_names())) — pgml.predict(project, ARRAY[...]) and predict_batch —
        → features. Each column's inputs in order (array columns k consecutive values); NaN is
        missing. Text categories cannot come as numbers: 42804, use a row constructor then."""
        self._check_fitted()
        X = np.asarray(X, dtype=np.float64)
        X = X.reshape(1, -1) if X.ndim == 1 else X
        names = self.input_names()
        if X.ndim != 2 or X.shape[1] != len(names):
            raise PgError(sqlstate.INVALID_PARAMETER_VALUE,
                          f"the model takes {len(names)} input values ({', '.join(names)}), got "
                          f"{X.shape[-1] if X.ndim else 1}")
        columns, at = {}, 0
        for c in self._columns:
            width = len(c.inputs())
            if c.kind.kind == CATEGORICAL:
                raise PgError(sqlstate.DATATYPE_MISMATCH,
                              f'the model\'s input "{c.kind.name}" is text ({c.kind.type_name}), which an array of '
                              f"numbers cannot carry",
                              hint="Pass the inputs as a row: pgml.predict('project', ROW(1.5, 'Paris', ...)).")
            columns[c.kind.name] = X[:, at:at + width] if c.kind.kind == ARRAY else X[:, at]
            at += width
        return self.transform(columns)

    def transform_row(self, values: Sequence[Any]) -> np.ndarray:
        """One row of Python values, in column order → a (1, num_features) matrix, as transform gives it.

        Values: numbers (int/float/bool/Decimal), str (a category; a number given as text is
        parsed for numeric columns), None (missing), a list for an array column. Temporal columns
        take epoch seconds as SQL's extract(epoch from …) gives them, or datetime/date/time/
        timedelta objects, converted the same way (a naive datetime is read as UTC, a date as
        its midnight, a time as seconds since midnight, a timedelta as total seconds).
        """
        self._check_fitted()
        if len(values) != len(self.kinds):
            raise PgError(sqlstate.INVALID_PARAMETER_VALUE,
                          f"the model takes {len(self.kinds)} input values ({', '.join(k.name for k in self.kinds)}), "
                          f"got {len(values)}")
        return self.transform({k.name: [v] for k, v in zip(self.kinds, values)})

    def fit_transform(self, columns: Mapping[str, Any], y=None, *, task: str | None = None,
                      algorithm: str | None = None, spec: Mapping[str, ColumnSpec] | None = None,
                      cross_fit: int = CROSS_FIT_FOLDS, order: str = "C") -> np.ndarray:
        """fit, then the TRAINING matrix — use it to train the model. Target-encoded columns are
        cross-fitted here (out-of-fold, `cross_fit` folds; 0 or 1 = in-sample like transform):
        a row's own label never feeds its own feature, so the model does not learn a leak. The
        fitted tables (used by transform for test and predict rows) are the full-data ones."""
        self.fit(columns, y, task=task, algorithm=algorithm, spec=spec)
        data = self._inputs(columns)
        target = _target(y, _rows(data, self.kinds), task, self.settings)
        blocks = [c.cross_fitted(v, target, cross_fit) if isinstance(c, _Categorical) else c.transform(v)
                  for c, v in zip(self._columns, data)]
        return self._assemble(blocks, self.rows, order)

    # ------------------------------------------------------------ what came out

    @property
    def num_features(self) -> int:
        return sum(len(c.features) for c in self._columns)

    def feature_names(self) -> list[str]:
        return [name for c in self._columns for name in c.features]

    def feature_sources(self) -> list[str]:
        """The source column of every output feature (to sum importances back per column)."""
        return [c.kind.name for c in self._columns for _ in c.features]

    def categorical_features(self) -> list[int]:
        """Indices of the output features that are native category codes (for LightGBM/XGBoost/CatBoost)."""
        out, at = [], 0
        for c in self._columns:
            if isinstance(c, _Categorical) and c.encoding == "native":
                out.append(at)
            at += len(c.features)
        return out

    def analysis(self) -> dict:
        """JSON-serialisable statistics and choices per column (pgml.snapshots.analysis/columns)."""
        self._check_fitted()
        return {"rows": self.rows, "num_features": self.num_features, "task": self.task,
                "algorithm": self.algorithm, "settings": dict(self.settings),
                "columns": [c.analysis() for c in self._columns]}

    def postgresml_columns(self) -> list[dict]:
        """The feature columns as PostgresML 2.x records them in pgml.snapshots.columns (name, pg_type,
        nullable, label, position, size, array, preprocessor, statistics with min/max/max_abs/mean/
        median/mode/variance/std_dev/missing/distinct/histogram/ventiles and, for categories, the
        categories with their value and members, NULL as "__NULL__"). Add the label columns with
        label=True yourself; `position` is the 1-based order of the feature columns here."""
        self._check_fitted()
        return [_clean(c.postgresml(i + 1)) for i, c in enumerate(self._columns)]

    def to_json(self) -> dict:
        self._check_fitted()
        return {"version": VERSION, "task": self.task, "algorithm": self.algorithm, "rows": self.rows,
                "settings": dict(self.settings), "columns": [c.to_json() for c in self._columns]}

    @classmethod
    def from_json(cls, obj: Mapping) -> "Preprocessor":
        if obj.get("version") != VERSION:
            raise ValueError(f"unknown preprocessor version {obj.get('version')!r}")
        columns = [_Column.from_json(c) for c in obj["columns"]]
        s = obj["settings"]
        self = cls([c.kind for c in columns], one_hot_limit=s["one_hot_limit"], min_frequency=s["min_frequency"],
                   smoothing=s["smoothing"])
        self.settings = dict(s)
        self._columns, self.task, self.algorithm, self.rows = columns, obj["task"], obj["algorithm"], obj["rows"]
        return self

    def __getstate__(self):            # pickles as its JSON form: small, stable across code changes
        return self.to_json()

    def __setstate__(self, state):
        self.__dict__.update(Preprocessor.from_json(state).__dict__)

    # ------------------------------------------------------------ helpers

    def _check_fitted(self) -> None:
        if not self._columns and self.kinds:
            raise RuntimeError("the preprocessor is not fitted")

    def _inputs(self, columns: Mapping[str, Any]) -> list:
        missing = [k.name for k in self.kinds if k.name not in columns]
        if missing:
            raise PgError(sqlstate.UNDEFINED_COLUMN, f'column "{missing[0]}" is missing from the input',
                          hint="The model takes " + ", ".join(f'"{k.name}"' for k in self.kinds) + ".")
        return [_convert(k, columns[k.name]) for k in self.kinds]


def take_rows(columns: Mapping[str, Any], index) -> dict[str, Any]:
    """The rows `index` (slice, index array or bool mask) of every decoded column: a train/test split."""
    out = {}
    for name, values in columns.items():
        if isinstance(values, (TextColumn, np.ndarray)):
            out[name] = values[index]
        else:
            out[name] = np.asarray(values, dtype=object)[index].tolist()
    return out


# ---------------------------------------------------------------- input conversion

def _convert(kind: ColumnKind, values: Any):
    """Decoded values → TextColumn (categorical), (n, k) float64 (array) or (n,) float64 (the rest)."""
    if kind.kind == CATEGORICAL:
        if isinstance(values, TextColumn):
            return values
        return TextColumn.from_values(values.tolist() if isinstance(values, np.ndarray) else values)
    if kind.kind == ARRAY:
        if isinstance(values, np.ndarray) and values.dtype != object:
            out = np.asarray(values, dtype=np.float64)
            if out.ndim != 2:
                raise _bad_input(kind, "an array column needs a 2-D matrix (rows × elements)")
            return out
        rows = [None if v is None else [_number(kind, e) for e in np.asarray(v, dtype=object).reshape(-1)]
                for v in values]
        width = max((len(r) for r in rows if r is not None), default=0)
        out = np.full((len(rows), width), np.nan)
        for i, r in enumerate(rows):
            if r is not None:
                if len(r) != width:
                    raise _bad_input(kind, f"arrays of different lengths ({len(r)} and {width})")
                out[i] = r
        return out
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":
        return values.astype(np.float64, copy=False).reshape(-1)
    return np.array([_number(kind, v) for v in values], dtype=np.float64)


def _number(kind: ColumnKind, v: Any) -> float:
    if v is None:
        return math.nan
    if isinstance(v, (bool, np.bool_)):
        return 1.0 if v else 0.0
    if isinstance(v, _dt.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=_dt.timezone.utc)
        return (v - _EPOCH).total_seconds()
    if isinstance(v, _dt.date):
        return float((v - _dt.date(1970, 1, 1)).days * 86400)
    if isinstance(v, _dt.time):
        seconds = v.hour * 3600 + v.minute * 60 + v.second + v.microsecond / 1e6
        offset = v.utcoffset()
        return seconds - (offset.total_seconds() if offset is not None else 0.0)
    if isinstance(v, _dt.timedelta):
        return v.total_seconds()
    if isinstance(v, str):
        if kind.kind == TEMPORAL:
            raise _bad_input(kind, f"{v!r} is text: pass epoch seconds or a date/time value")
        word = v.strip().lower()
        if kind.kind == BOOLEAN and word in _TRUE + _FALSE:
            return 1.0 if word in _TRUE else 0.0
        try:
            return float(v)
        except ValueError:
            raise PgError(sqlstate.INVALID_TEXT_REPRESENTATION,
                          f'invalid input for column "{kind.name}" ({kind.type_name}): {v!r}') from None
    try:
        return float(v)
    except (TypeError, ValueError):
        raise _bad_input(kind, f"cannot use a {type(v).__name__} value") from None


_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_TRUE, _FALSE = ("t", "true", "yes", "on", "1"), ("f", "false", "no", "off", "0")   # PostgreSQL's bool input


def _bad_input(kind: ColumnKind, why: str) -> PgError:
    return PgError(sqlstate.DATATYPE_MISMATCH, f'column "{kind.name}" ({kind.type_name}): {why}')


def _rows(data: list, kinds: Sequence[ColumnKind]) -> int:
    lengths = {len(d) for d in data}
    if len(lengths) > 1:
        raise PgError(sqlstate.INVALID_PARAMETER_VALUE, "the input columns have different numbers of rows")
    return lengths.pop() if lengths else 0


def _target(y, n: int, task: str | None, settings: dict):
    """The label as target encoding needs it: ('regression', y) / ('classes', indices, C) / None."""
    if y is None:
        return None
    y = np.asarray(y, dtype=np.float64)
    if y.ndim == 2:
        y = y[:, 0]            # joint regression: the first label, as PostgresML
    if len(y) != n:
        raise ValueError(f"y has {len(y)} rows, the columns {n}")
    if not np.isfinite(y).all():
        raise PgError(sqlstate.NULL_VALUE_NOT_ALLOWED, "the label has NULL or non-finite values in the training rows",
                      hint="Train on the rows that have a label (a view with WHERE label IS NOT NULL).")
    if task == "classification":
        classes = int(y.max()) + 1 if len(y) else 0
        return ("classes", y, classes)
    return ("regression", y)


# ---------------------------------------------------------------- statistics

def _stats(x: np.ndarray) -> dict:
    """Statistics of the finite values of x (1-D), from one sort."""
    good = np.sort(x[np.isfinite(x)])
    n = len(good)
    if n == 0:
        return {"count": 0}
    q = [_quantile(good, p) for p in (0.25, 0.5, 0.75)]
    starts = np.flatnonzero(np.concatenate(([True], good[1:] != good[:-1])))
    counts = np.diff(np.append(starts, n))
    bins, edges = np.histogram(good, bins=HISTOGRAM_BINS, range=(good[0], good[-1]))
    return {"count": int(n), "mean": float(good.mean()), "std": float(good.std()),
            "min": float(good[0]), "max": float(good[-1]), "p25": q[0], "median": q[1], "p75": q[2],
            "mode": float(good[starts[np.argmax(counts)]]), "distinct": int(len(starts)),
            "ventiles": [_quantile(good, v / 20) for v in range(1, 20)],
            "histogram": {"edges": edges.tolist(), "counts": bins.tolist()}}


def _quantile(ordered: np.ndarray, p: float) -> float:
    """np.percentile's default (linear) interpolation, on already sorted values."""
    at = p * (len(ordered) - 1)
    lo = int(math.floor(at))
    hi = min(lo + 1, len(ordered) - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (at - lo))


def _postgresml_stats(stats: dict, missing: int) -> dict:
    if not stats.get("count"):
        return {"missing": missing, "distinct": 0}
    return {"min": stats["min"], "max": stats["max"], "max_abs": max(abs(stats["min"]), abs(stats["max"])),
            "mean": stats["mean"], "median": stats["median"], "mode": stats["mode"], "variance": stats["std"] ** 2,
            "std_dev": stats["std"], "missing": missing, "distinct": stats["distinct"],
            "histogram": stats["histogram"]["counts"], "ventiles": stats["ventiles"]}


def _fill_value(stats: dict, how: str) -> float:
    if how == "zero" or stats["count"] == 0:
        return 0.0          # a feature with no training value at all is imputed with 0
    return stats[{"mean": "mean", "median": "median", "mode": "mode", "min": "min", "max": "max"}[how]]


def _scaler(x: np.ndarray, how: str) -> tuple[float, float]:
    """(center, scale) for output feature values x of the training rows."""
    if how == "preserve" or len(x) == 0:
        return 0.0, 1.0
    if how == "standard":
        center, spread = float(x.mean()), float(x.std())
    elif how == "min_max":
        center, spread = float(x.min()), float(x.max() - x.min())
    elif how == "max_abs":
        center, spread = 0.0, float(np.abs(x).max())
    else:  # robust
        p25, p50, p75 = np.percentile(x, [25, 50, 75])
        center, spread = float(p50), float(p75 - p25)
    return center, (spread if spread > 0 and math.isfinite(spread) else 1.0)


def _missing_error(kind: ColumnKind, count: int, where: str) -> PgError:
    return PgError(sqlstate.NULL_VALUE_NOT_ALLOWED,
                   f'column "{kind.name}" has {count} missing value{"s" if count != 1 else ""} (NULL or NaN) {where}, '
                   f'and its preprocess says impute "error"',
                   hint=f"Choose another impute for it, e.g. preprocess => "
                        f"'{{\"{kind.name}\": {{\"impute\": \"mean\"}}}}', or filter the rows in a view.")


def _clean(v):
    """JSON-safe: NaN/±Infinity → None, numpy scalars → Python."""
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (np.floating, float)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def _short(value, limit: int = 200):
    """A category as analysis() shows it: long text cut (the vocabulary itself keeps every byte)."""
    return value[:limit] + "…" if isinstance(value, str) and len(value) > limit else value


def _floats(values) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in values], dtype=np.float64)


# ---------------------------------------------------------------- per-column transformers

class _Column:
    kind: ColumnKind
    features: list[str]

    def inputs(self) -> list[str]:
        width = getattr(self, "width", 1)
        if self.kind.kind == ARRAY:
            return [f"{self.kind.name}[{j + 1}]" for j in range(width)]
        return [self.kind.name]

    @staticmethod
    def from_json(obj: dict) -> "_Column":
        cls = {"numeric": _Numeric, "categorical": _Categorical}[obj["transform"]]
        col = cls.__new__(cls)
        col.load(obj)
        return col


class _Numeric(_Column):
    """Numbers, booleans, temporal values (with calendar parts) and arrays: impute, derive, scale."""

    def __init__(self, kind: ColumnKind, spec: ColumnSpec):
        self.kind, self.spec = kind, spec

    def fit(self, x: np.ndarray, target, scale_default: str) -> None:
        kind = self.kind
        raw = x.reshape(len(x), -1) if kind.kind == ARRAY else x.reshape(-1, 1)
        raw = np.where(np.isfinite(raw), raw, np.nan)
        missing = np.isnan(raw)
        self.impute = self.spec.impute or ("mode" if kind.kind == BOOLEAN else "mean")
        if self.impute == "error" and missing.any():
            raise _missing_error(kind, int(missing.any(axis=1).sum()), "in the training rows")
        self.raw_stats = [_stats(raw[:, j]) for j in range(raw.shape[1])]
        self.missing = int(missing.any(axis=1).sum())
        self.fill = [_fill_value(s, self.impute if self.impute != "error" else "zero") for s in self.raw_stats]
        self.width = raw.shape[1]
        self.parts = _CALENDAR.get(kind.subkind, ()) if kind.kind == TEMPORAL else ()
        if kind.kind == ARRAY:
            self.features = [f"{kind.name}[{j + 1}]" for j in range(self.width)]
        else:
            self.features = [kind.name] + [f"{kind.name}.{p}" for p in self.parts]
        self.scale = self.spec.scale or scale_default
        derived = self._derive(self._impute(raw))
        self.center, self.spread = map(list, zip(*(_scaler(derived[:, j], self.scale)
                                                   for j in range(derived.shape[1])))) if derived.shape[1] else ([], [])
        self.distinct = int(self.raw_stats[0].get("distinct", 0)) if self.width == 1 else None

    def _impute(self, raw: np.ndarray) -> np.ndarray:
        missing = np.isnan(raw)
        if self.impute == "error" and missing.any():
            raise _missing_error(self.kind, int(missing.any(axis=1).sum()), "in the input")
        if not missing.any():
            return raw
        return np.where(missing, np.asarray(self.fill, dtype=np.float64), raw)

    def _derive(self, x: np.ndarray) -> np.ndarray:
        if not self.parts:
            return x
        epoch = x[:, 0]
        days = np.floor(epoch / 86400.0)
        out = [epoch]
        dates = days.astype(np.int64).astype("datetime64[D]")
        months = dates.astype("datetime64[M]")
        for part in self.parts:
            if part == "dow":
                out.append(np.mod(days + 4.0, 7.0))                     # 1970-01-01 was a Thursday (4)
            elif part == "month":
                out.append((months.astype(np.int64) % 12 + 1).astype(np.float64))
            elif part == "day":
                out.append(((dates - months).astype(np.int64) + 1).astype(np.float64))
            else:  # hour
                out.append(np.floor((epoch - days * 86400.0) / 3600.0))
        return np.column_stack(out)

    def transform(self, x: np.ndarray) -> np.ndarray:
        raw = x.reshape(len(x), -1) if self.kind.kind == ARRAY else x.reshape(-1, 1)
        if raw.shape[1] != self.width:
            raise _bad_input(self.kind, f"{raw.shape[1]} elements given, the model was trained with {self.width}")
        raw = np.where(np.isfinite(raw), raw, np.nan)
        out = self._derive(self._impute(raw))
        if self.scale != "preserve":
            out = (out - np.asarray(self.center)) / np.asarray(self.spread)
        return out

    def analysis(self) -> dict:
        out = {"name": self.kind.name, "type": self.kind.type_name, "kind": self.kind.kind,
               "subkind": self.kind.subkind, "nulls": self.missing,
               "preprocess": {"impute": self.impute, "scale": self.scale, "encode": "native"},
               "features": self.features}
        if self.width == 1:
            out["statistics"] = self.raw_stats[0]
            out["distinct"] = self.distinct
        else:
            out["statistics"] = self.raw_stats
        return _clean(out)

    def postgresml(self, position: int) -> dict:
        stats = self.raw_stats[0] if self.raw_stats else {"count": 0}
        return {"name": self.kind.name, "pg_type": self.kind.type_name, "nullable": self.missing > 0, "label": False,
                "position": position, "size": self.width, "array": self.kind.kind == ARRAY,
                "preprocessor": {"encode": "native", "impute": self.impute, "scale": self.scale},
                "statistics": _postgresml_stats(stats, self.missing)}

    def to_json(self) -> dict:
        return _clean({"transform": "numeric", "kind": self.kind.to_json(), "spec": self.spec.to_json(),
                       "impute": self.impute, "scale": self.scale, "fill": self.fill, "width": self.width,
                       "parts": list(self.parts), "features": self.features, "center": self.center,
                       "spread": self.spread, "raw_stats": self.raw_stats, "missing": self.missing,
                       "distinct": self.distinct})

    def load(self, obj: dict) -> None:
        self.kind, self.spec = ColumnKind.from_json(obj["kind"]), ColumnSpec.from_json(obj["spec"])
        self.impute, self.scale, self.width = obj["impute"], obj["scale"], obj["width"]
        self.fill = [0.0 if v is None else v for v in obj["fill"]]
        self.parts, self.features = tuple(obj["parts"]), obj["features"]
        self.center, self.spread = obj["center"], obj["spread"]
        self.raw_stats, self.missing, self.distinct = obj["raw_stats"], obj["missing"], obj["distinct"]


class _Categorical(_Column):
    """Values → codes (sorted vocabulary, searchsorted) → one gather from a fitted table.

    Codes: 0..m-1 the vocabulary, m NULL, m+1 unknown (rare in training, or unseen). The table
    holds the final output row of every code: encoding, imputing and scaling are folded into it.
    """

    def __init__(self, kind: ColumnKind, spec: ColumnSpec, settings: dict):
        self.kind, self.spec, self.settings = kind, spec, settings

    # keys: bytes ('S') for text, float64 for numbers encoded as categories
    def _keys(self, values) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(values, TextColumn):
            return values.values, values.null
        x = np.asarray(values, dtype=np.float64).reshape(-1)
        null = ~np.isfinite(x)
        return np.where(null, 0.0, x), null

    def _codes(self, keys: np.ndarray, null: np.ndarray) -> np.ndarray:
        m = len(self.vocab)
        if m == 0:
            return np.where(null, 0, 1).astype(np.int64)
        index = np.searchsorted(self.vocab, keys)
        clipped = np.minimum(index, m - 1)
        hit = self.vocab[clipped] == keys
        return np.where(null, m, np.where(hit, clipped, m + 1)).astype(np.int64)

    def fit(self, values, target, scale_default: str) -> None:
        kind, spec, settings = self.kind, self.spec, self.settings
        self.text = isinstance(values, TextColumn)
        keys, null = self._keys(values)
        n, self.nulls = len(keys), int(null.sum())
        present = keys[~null]
        uniq, counts = np.unique(present, return_counts=True)
        self.distinct = int(len(uniq))
        order = np.argsort(-counts, kind="stable")[:TOP_CATEGORIES]
        self.top = [[_short(self._shown(uniq[i])), int(counts[i])] for i in order]
        self.impute = spec.impute
        if self.impute == "error" and self.nulls:
            raise _missing_error(kind, self.nulls, "in the training rows")
        encoding = spec.encode
        if encoding is None:
            if kind.kind != CATEGORICAL:
                encoding = "native"
            elif self.distinct <= settings["one_hot_limit"]:
                encoding = "one_hot"
            elif target is not None and not (target[0] == "classes"
                                             and target[2] > settings["multiclass_target_limit"]):
                encoding = "target"
            else:
                encoding = "frequency"
        if encoding == "target" and target is None:
            raise PgError(sqlstate.INVALID_PARAMETER_VALUE,
                          f'column "{kind.name}": target encoding needs a label, and this training has none',
                          hint='Use "encode": "one_hot" or "ordinal" instead.')
        self.encoding = encoding
        # vocabulary
        if encoding == "ordinal":
            given = [self._key(v) for v in spec.ordinal]
            order_keys = np.array(given) if self.text else np.array(given, dtype=np.float64)
            sort = np.argsort(order_keys, kind="stable")
            self.vocab = order_keys[sort]
            self.ordinal_rank = (sort + 1).astype(np.float64)          # 1-based position in the given list
            outside = ~np.isin(uniq, self.vocab)
            if outside.any():
                shown = ", ".join(repr(self._shown(v)) for v in uniq[outside][:5])
                raise PgError(sqlstate.INVALID_PARAMETER_VALUE,
                              f'column "{kind.name}" has values not in its ordinal list: {shown}',
                              hint="The ordinal list must name every value of the training rows, in order.")
        elif encoding in ("target", "frequency"):
            self.vocab = uniq[counts >= settings["min_frequency"]]
        else:
            self.vocab = uniq
        m = len(self.vocab)
        codes = self._codes(keys, null)
        code_counts = np.bincount(codes, minlength=m + 2).astype(np.float64)
        self.counts = code_counts.astype(np.int64).tolist()      # training rows per code
        # the table: one output row per code
        if encoding == "one_hot":
            self.features = [f"{kind.name}={self._shown(v)}" for v in self.vocab]
            null_column = bool(self.nulls) and self.impute is None      # NULL as its own category
            table = np.zeros((m + 2, m + null_column))
            table[np.arange(m), np.arange(m)] = 1.0
            if null_column:
                self.features.append(f"{kind.name}=NULL")
                table[m, m] = 1.0
        elif encoding == "ordinal":
            self.features = [kind.name]
            table = np.concatenate([self.ordinal_rank, [0.0, 0.0]])[:, None]
        elif encoding == "native":
            self.features = [kind.name]
            table = np.arange(m + 2, dtype=np.float64)[:, None]
        elif encoding == "frequency":
            self.features = [f"{kind.name}.frequency"]
            table = (code_counts / n)[:, None]
        else:  # target
            table, self.features = self._target_table(codes, code_counts, target, m)
        self.mode_code = int(self._codes(uniq[[int(np.argmax(counts))]], np.zeros(1, bool))[0]) if len(uniq) else None
        table = self._impute_null(table, codes, null)
        # scale (never one-hot): statistics of the training rows' outputs, folded into the table
        self.scale = "preserve" if encoding == "one_hot" else (spec.scale or scale_default)
        train = table[codes] if self.scale != "preserve" else None
        self.center, self.spread = [], []
        for j in range(table.shape[1]):
            center, spread = _scaler(train[:, j], self.scale) if train is not None else (0.0, 1.0)
            self.center.append(center)
            self.spread.append(spread)
        self.table = self._scaled(table)

    def _impute_null(self, table: np.ndarray, codes: np.ndarray, null: np.ndarray) -> np.ndarray:
        """The NULL row of the table when `impute` is asked for (else NULL stays its own category)."""
        m = len(self.vocab)
        if self.impute == "mode" and self.mode_code is not None:
            table[m] = table[self.mode_code]
        elif self.impute in ("mean", "median", "min", "max", "zero"):
            train = table[codes[~null]]
            table[m] = [_fill_value(_stats(train[:, j]), self.impute) for j in range(table.shape[1])]
        return table

    def _scaled(self, table: np.ndarray) -> np.ndarray:
        if self.scale == "preserve":
            return table
        return (table - np.asarray(self.center)) / np.asarray(self.spread)

    def cross_fitted(self, values, target, folds: int, seed: int = 0) -> np.ndarray:
        """Out-of-fold target encoding of the TRAINING rows: each row is encoded by a table fitted on
        the other folds (same vocabulary, smoothing and scaling), so its own label does not leak
        into its feature. Other encodings use no label: the plain transform."""
        keys, null = self._keys(values)
        n = len(keys)
        if self.encoding != "target" or target is None or folds < 2 or n < 2:
            return self.transform(values)
        codes = self._codes(keys, null)
        fold = np.random.default_rng(seed).permutation(n) % min(folds, n)
        out = np.empty((n, self.table.shape[1]))
        m = len(self.vocab)
        for k in range(min(folds, n)):
            inside, others = fold == k, fold != k
            sub = (target[0], target[1][others]) + tuple(target[2:])
            table, _ = self._target_table(codes[others], np.bincount(codes[others], minlength=m + 2).astype(np.float64),
                                          sub, m)
            table = self._impute_null(table, codes[others], null[others])
            out[inside] = self._scaled(table)[codes[inside]]
        return out

    def _target_table(self, codes, code_counts, target, m):
        kind, s = self.kind, self.settings["smoothing"]
        if target[0] == "regression":
            ys = [target[1]]
            names = [f"{kind.name}.target"]
        else:
            y, classes = target[1], target[2]
            if classes <= 2:
                ys, names = [(y == 1).astype(np.float64)], [f"{kind.name}.target"]
            else:
                ys = [(y == c).astype(np.float64) for c in range(classes)]
                names = [f"{kind.name}.target[{c}]" for c in range(classes)]
        table = np.empty((m + 2, len(ys)))
        for j, yj in enumerate(ys):
            prior = float(yj.mean())
            sums = np.bincount(codes, weights=yj, minlength=m + 2)
            table[:, j] = (sums + s * prior) / (code_counts + s)
        return table, names

    def _key(self, v):
        if self.text:
            return (v if isinstance(v, str) else str(v)).encode("utf-8")
        try:
            return float(v)
        except (TypeError, ValueError):
            raise PgError(sqlstate.INVALID_PARAMETER_VALUE,
                          f'column "{self.kind.name}" is {self.kind.type_name}: its ordinal values must be numbers, '
                          f"not {v!r}") from None

    def _shown(self, key) -> Any:
        if self.text:
            return bytes(key).decode("utf-8", "replace")
        f = float(key)
        return int(f) if f.is_integer() else f

    def transform(self, values) -> np.ndarray:
        keys, null = self._keys(values)
        if self.impute == "error" and null.any():
            raise _missing_error(self.kind, int(null.sum()), "in the input")
        return self.table[self._codes(keys, null)]

    def analysis(self) -> dict:
        return _clean({"name": self.kind.name, "type": self.kind.type_name, "kind": self.kind.kind,
                       "subkind": self.kind.subkind, "nulls": self.nulls, "distinct": self.distinct,
                       "top_categories": self.top, "vocabulary_size": len(self.vocab),
                       "preprocess": {"impute": self.impute or "category", "scale": self.scale,
                                      "encode": self.encoding}, "features": self.features})

    def postgresml(self, position: int) -> dict:
        m = len(self.vocab)
        value = self.table[:, 0]
        if self.encoding in ("one_hot", "native"):
            value = np.arange(m + 2, dtype=np.float64)
        categories = {str(self._shown(v)): {"value": float(value[i]), "members": int(self.counts[i])}
                      for i, v in enumerate(self.vocab)}
        categories["__NULL__"] = {"value": float(value[m]), "members": self.nulls}
        encode = {"ordinal": list(self.spec.ordinal)} if self.encoding == "ordinal" else \
            "native" if self.encoding == "frequency" else self.encoding
        return {"name": self.kind.name, "pg_type": self.kind.type_name, "nullable": self.nulls > 0, "label": False,
                "position": position, "size": 1, "array": False,
                "preprocessor": {"encode": encode, "impute": self.impute or "error", "scale": self.scale},
                "statistics": {"missing": self.nulls, "distinct": self.distinct, "categories": categories}}

    def to_json(self) -> dict:
        vocab = [self._shown(v) for v in self.vocab] if self.text else [float(v) for v in self.vocab]
        return _clean({"transform": "categorical", "kind": self.kind.to_json(), "spec": self.spec.to_json(),
                       "settings": self.settings, "text": self.text, "vocab": vocab, "table": self.table.tolist(),
                       "encoding": self.encoding, "impute": self.impute, "scale": self.scale,
                       "features": self.features, "nulls": self.nulls, "distinct": self.distinct, "top": self.top,
                       "center": self.center, "spread": self.spread, "mode_code": self.mode_code,
                       "counts": self.counts})

    def load(self, obj: dict) -> None:
        self.kind, self.spec, self.settings = ColumnKind.from_json(obj["kind"]), ColumnSpec.from_json(obj["spec"]), \
            obj["settings"]
        self.text = obj["text"]
        if self.text:
            raw = [v.encode("utf-8") for v in obj["vocab"]]
            self.vocab = np.array(raw, dtype=f"S{max([len(v) for v in raw] + [1])}")
        else:
            self.vocab = np.array(obj["vocab"], dtype=np.float64)
        self.table = np.array([_floats(r) for r in obj["table"]], dtype=np.float64).reshape(len(self.vocab) + 2, -1)
        self.encoding, self.impute, self.scale = obj["encoding"], obj["impute"], obj["scale"]
        self.features, self.nulls, self.distinct, self.top = obj["features"], obj["nulls"], obj["distinct"], obj["top"]
        self.center, self.spread, self.mode_code = obj["center"], obj["spread"], obj["mode_code"]
        self.counts = obj["counts"]
