"""Model training: the algorithm table, metrics, train/test split and the worker.

Reading a snapshot into numpy is ml/preprocessing's (decode.py).

Everything in this package is plain Python and numpy; it knows nothing of SQL sessions. Errors a
user can cause are raised as `TrainingError`, which carries a SQLSTATE so the session can turn it
into an ErrorResponse unchanged.
"""
from __future__ import annotations


class TrainingError(Exception):
    """A training problem the user can fix: a bad algorithm, hyperparameter, NULL in the data, …

    `sqlstate` is a PostgreSQL error code (e.g. '22023' invalid_parameter_value); `message`,
    `detail` and `hint` become the fields of the ErrorResponse.
    """

    def __init__(self, sqlstate: str, message: str, detail: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail
        self.hint = hint

    def __reduce__(self):
        # Keep every field when the error crosses the worker's process boundary.
        return (type(self), (self.sqlstate, self.message, self.detail, self.hint))


__all__ = ["TrainingError"]
