"""The call context: what a pgml.* function sees of the session that called it.

A function gets the client's session only through `pipeline.port.SessionPort`, an Executor on
that client's own upstream connection (so the client's role, GRANTs and transaction apply), and
the worker's model service (cache, loader, artifact key) on the server's own connection.
"""
from __future__ import annotations

from protocol import sqlstate
from protocol.errors import PgError

from ..pipeline.port import SessionPort
from ..pipeline.session_executor import SessionExecutor


class CallContext:
    __slots__ = ("session", "_executor", "extended")

    def __init__(self, session: SessionPort, *, extended: bool) -> None:
        self.session = session
        self._executor: SessionExecutor | None = None
        self.extended = extended

    @property
    def executor(self) -> SessionExecutor:
        """The client's own upstream session, made on first use: a predict answered from the
        cache never needs one (and is on the hot path)."""
        if self._executor is None:
            self._executor = SessionExecutor(self.session, extended=self.extended)
        return self._executor

    @property
    def user(self) -> str:
        return self.session.startup_params.get("user", "")

    @property
    def config(self):
        return self.session.ctx.config

    @property
    def models(self):
        """The worker's ModelService (ml/loader.py); an error when it did not start."""
        models = self.session.ctx.models
        if models is None:
            raise PgError(sqlstate.OBJECT_NOT_IN_PREREQUISITE_STATE, "the pgml registry is not available",
                          hint="Check the server log: the registry migrations or the upstream connection failed.")
        return models

    def notice(self, message: str) -> None:
        self.session.notice(message)

    def transaction_block(self) -> bool:
        """True inside BEGIN … COMMIT or inside a pipeline that already ran statements."""
        return self.session.tx_status != "I" or (self.extended and self.session.batch_dirty)
