"""Plans for unsupervised models: clusterers label a row with its nearest centre, decompositions
project it on their components.

- `CentroidPlan` (KMeans, MiniBatchKMeans, MeanShift, AffinityPropagation, Birch): the label of
  the nearest centre (Euclidean), as each estimator's own predict computes it.
- `ProjectionPlan` (PCA, IncrementalPCA, TruncatedSVD): `(X − mean) @ components.T`, divided by
  the components' standard deviations when whitened.
- Anything else: the estimator's own predict (`EstimatorPlan`) or transform (`TransformPlan`).
A clustering plan's `transform` and a decomposition plan's `predict` raise PlanError.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .contract import EstimatorPlan, PlanError, as_rows, no_proba


def _not_a_decomposition(name: str) -> PlanError:
    return PlanError(f"{name} is a clustering model: it has no components to decompose into")


class CentroidPlan:
    kind = "centroids"
    task = "clustering"
    classes = None

    def __init__(self, centers: np.ndarray, labels: np.ndarray, name: str = "") -> None:
        self.centers = np.ascontiguousarray(centers, dtype=np.float64)
        self.labels = np.asarray(labels, dtype=np.float64)
        self.norms = (self.centers ** 2).sum(axis=1)
        self.num_features = self.centers.shape[1]
        self.name = name
        self.nbytes = self.centers.nbytes + self.labels.nbytes + self.norms.nbytes + 256

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = as_rows(X, self.num_features)
        # ||x − c||² up to the row's own ||x||², which does not change the argmin.
        d = self.norms - 2.0 * (X @ self.centers.T)
        if np.isnan(d).any():
            raise PlanError(f"{self.name or 'a clustering model'} does not accept missing values (NULL or NaN)")
        return self.labels[d.argmin(axis=1)]

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        raise no_proba(self.name or "a clustering model")

    def transform(self, X: np.ndarray) -> np.ndarray:
        raise _not_a_decomposition(self.name or "this")


class ProjectionPlan:
    kind = "projection"
    task = "decomposition"
    classes = None

    def __init__(self, mean: np.ndarray | None, components: np.ndarray, scale: np.ndarray | None,
                 name: str = "") -> None:
        self.components_t = np.ascontiguousarray(np.asarray(components, dtype=np.float64).T)   # (F, k)
        self.num_features = self.components_t.shape[0]
        self.offset = (None if mean is None else
                       np.asarray(mean, dtype=np.float64).reshape(1, -1) @ self.components_t)   # (1, k)
        self.scale = None if scale is None else np.asarray(scale, dtype=np.float64)
        self.name = name
        self.nbytes = self.components_t.nbytes + 512

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = as_rows(X, self.num_features)
        T = X @ self.components_t
        if self.offset is not None:
            T -= self.offset
        if self.scale is not None:
            T /= self.scale
        if np.isnan(T).any():
            raise PlanError(f"{self.name or 'a decomposition'} does not accept missing values (NULL or NaN)")
        return T

    def predict(self, X: np.ndarray) -> np.ndarray:
        raise PlanError(f"{self.name or 'a decomposition'} has no prediction: use pgml.decompose")

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        raise no_proba(self.name or "a decomposition")


class TransformPlan(EstimatorPlan):
    """A decomposition served by its estimator's own transform."""

    def __init__(self, estimator: Any, task: str = "decomposition") -> None:
        super().__init__(estimator, task)

    def transform(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.estimator.transform(X), dtype=np.float64)

    def predict(self, X: np.ndarray) -> np.ndarray:
        raise PlanError(f"{type(self.estimator).__name__} has no prediction: use pgml.decompose")


class ClusterEstimatorPlan(EstimatorPlan):
    def transform(self, X: np.ndarray) -> np.ndarray:
        raise _not_a_decomposition(type(self.estimator).__name__)


def compile_unsupervised(estimator: Any, task: str) -> Any:
    """The plan of a fitted clusterer or decomposition (the estimator's own methods as fallback)."""
    name = type(estimator).__name__
    if task == "clustering":
        plan = _centroids(estimator, name)
        return plan if plan is not None else ClusterEstimatorPlan(estimator, task)
    plan = _projection(estimator, name)
    return plan if plan is not None else TransformPlan(estimator, task)


def _centroids(est, name: str) -> CentroidPlan | None:
    if name in ("KMeans", "MiniBatchKMeans", "MeanShift"):
        centers = est.cluster_centers_
        return CentroidPlan(centers, np.arange(len(centers)), name)
    if name == "AffinityPropagation":
        if len(getattr(est, "cluster_centers_indices_", ())) == 0:
            return None          # did not converge: its predict labels every row -1
        return CentroidPlan(est.cluster_centers_, np.arange(len(est.cluster_centers_)), name)
    if name == "Birch":
        return CentroidPlan(est.subcluster_centers_, est.subcluster_labels_, name)
    return None


def _projection(est, name: str) -> ProjectionPlan | None:
    if name in ("PCA", "IncrementalPCA"):
        scale = np.sqrt(est.explained_variance_) if getattr(est, "whiten", False) else None
        return ProjectionPlan(est.mean_, est.components_, scale, name)
    if name == "TruncatedSVD":
        return ProjectionPlan(None, est.components_, None, name)
    return None
