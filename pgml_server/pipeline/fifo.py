"""The entries of a session's FIFO, and the interface of who consumes upstream answers.

Every message sent upstream that PostgreSQL answers is one `Pending` entry; a local answer that
must be emitted between forwarded answers is a `LocalItem`. The session keeps them in one FIFO,
so responses reach the client in exactly the order PostgreSQL would produce them. Which message
queues which entry, and what finishes it, is `pipeline.rules`.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from .rules import ASYNC, EXT, EXT_DONE, SIMPLE, SYNC  # noqa: F401  (the kinds, for callers)


class Consumer:
    """Receives upstream responses for statements the server itself runs on a client's session."""

    def __init__(self) -> None:
        self.outstanding = 0
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()

    # A consumer with bulk = True gets runs of DataRows through on_rows(buf, start, end) and
    # returns where it stopped (start when it took none); the rest come one by one.
    bulk = False
    # A quiet consumer runs the server's own bookkeeping statements (CREATE TEMP TABLE IF NOT
    # EXISTS, TRUNCATE, ...): their NoticeResponses are not the client's and are dropped.
    quiet = False

    def on_message(self, msg_type: int, payload: bytes) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def on_rows(self, buf: bytes, start: int, end: int) -> int:  # pragma: no cover - interface
        return start

    # A consumer with bulk_copy = True gets runs of CopyData messages through
    # on_copy_data(buf, start, end), the same way (a binary COPY sends one message per row).
    bulk_copy = False

    def on_copy_data(self, buf: bytes, start: int, end: int) -> int:  # pragma: no cover - interface
        return start

    def item_finished(self) -> None:
        self.outstanding -= 1
        if self.outstanding == 0 and not self.done.done():
            self.done.set_result(None)

    def aborted(self) -> None:
        """The upstream connection went away."""
        if not self.done.done():
            self.done.set_exception(ConnectionError("upstream connection lost"))


class Pending:
    __slots__ = ("kind", "consumer")

    def __init__(self, kind: int, consumer: Consumer | None = None) -> None:
        self.kind = kind
        self.consumer = consumer          # None: responses are relayed to the client


class LocalItem:
    """A locally produced answer: ready bytes, or a coroutine to run once it reaches the head."""

    __slots__ = ("data", "run", "extended")
    consumer = None       # never receives upstream responses

    def __init__(self, data: bytes | None = None,
                 run: Callable[[], Awaitable[None]] | None = None, extended: bool = True) -> None:
        self.data = data
        self.run = run
        self.extended = extended


def awaits_upstream(queue) -> bool:
    """Whether any forwarded message in the FIFO still awaits its answer."""
    return any(type(item) is Pending for item in queue)


def may_be_skipped(queue) -> bool:
    """Whether an earlier message of this batch (since the last Sync) still awaits an answer
    that may be an error, after which PostgreSQL would skip what follows until Sync."""
    for item in reversed(queue):
        if type(item) is Pending:
            if item.kind == SYNC:
                return False
            if item.kind == EXT:
                return True
    return False
