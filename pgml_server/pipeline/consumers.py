"""Consumers of the upstream's answers to internal statements: collect them, or relay them.

`Collector` keeps what an internal statement returns (row descriptions, parameter types, rows,
the command tag, COPY data, the first error); `Relay` passes a statement's answer on to the
client, holding back the messages that answer the server's own bookkeeping; `Discard` drops all.
"""
from __future__ import annotations

import struct
from typing import Any

import numpy as np

from protocol import messages as m
from protocol import types
from protocol.errors import PgError

from .fifo import Consumer
from .port import SessionPort
from .rules import ERROR

_I32 = struct.Struct("!i")


def same_run(block: np.ndarray, checks: list[slice], first: int = 64) -> int:
    """How many rows of `block` (messages of one length, one per row) from the first on match the
    first row in every byte range of `checks`. Probes a prefix that doubles (64, 256, …) until a row
    differs, so a short run costs what it takes, not a comparison of the whole buffer: called once
    per run, a scan of everything left made buffers of short runs (rows of text or with NULLs)
    quadratic."""
    count = block.shape[0]
    probe = min(count, first)
    while True:
        head = block[:probe]
        same = np.ones(probe, dtype=bool)
        for sl in checks:
            same &= (head[:, sl] == block[0, sl]).all(axis=1)
        if not same.all():
            return int(np.argmin(same))
        if probe == count:
            return count
        probe = min(count, probe * 4)


def decode_text_value(oid: int, data: bytes | None) -> Any:
    """A text-format result value as the Executor contract's Python value (numeric → float)."""
    if data is None:
        return None
    try:
        value = types.decode(oid, bytes(data), False)
    except Exception:
        return bytes(data).decode()
    if type(value).__name__ == "Decimal":
        return float(value)
    return value


def error_of(payload: bytes) -> PgError:
    return PgError.from_fields(m.ErrorResponse.decode(payload).fields)


class Collector(Consumer):
    """Collects one internal statement's results.

    decode_rows: DataRows become tuples of Python values (text results, decoded by column type);
    otherwise each row is kept as its raw DataRow payload (binary results read by the caller).
    quiet: NoticeResponses raised by the statement are the server's, not the client's."""

    bulk_copy = True

    def __init__(self, *, decode_rows: bool = False, quiet: bool = False) -> None:
        super().__init__()
        self.decode_rows = decode_rows
        self.quiet = quiet
        self.fields: list | None = None
        self.oids: list[int] = []
        self.param_oids: list[int] = []
        self.rows: list = []
        self.tag = ""
        self.copy_chunks: list[bytes] = []
        self.error: PgError | None = None

    def on_message(self, t: int, payload: bytes) -> None:
        if t == 0x44:  # 'D'
            if self.decode_rows:
                row = m.DataRow.decode(payload).values
                self.rows.append(tuple(decode_text_value(o, v) for o, v in zip(self.oids, row)))
            else:
                self.rows.append(bytes(payload))
        elif t == 0x54:  # 'T'
            self.fields = m.RowDescription.decode(payload).fields
            self.oids = [f.type_oid for f in self.fields]
        elif t == 0x74:  # 't'
            self.param_oids = m.ParameterDescription.decode(payload).oids
        elif t == 0x43:  # 'C'
            self.tag = m.CommandComplete.decode(payload).tag
        elif t == 0x64:  # 'd'
            self.copy_chunks.append(bytes(payload))
        elif t == ERROR and self.error is None:
            self.error = error_of(payload)

    def on_copy_data(self, buf: bytes, start: int, end: int) -> int:
        """Take the run of CopyData messages at `start` that have the first one's length (rows of
        fixed-width columns): one numpy copy strips their headers; the rest come one by one."""
        size = 1 + _I32.unpack_from(buf, start + 1)[0]
        count = (end - start) // size
        if count >= 2:
            block = np.frombuffer(buf, np.uint8, count * size, start).reshape(count, size)
            k = same_run(block, [slice(0, 5)])
            if k >= 2:
                self.copy_chunks.append(block[:k, 5:].tobytes())
                return start + k * size
        # Rows of different lengths (text, NULLs): the CopyData messages one after another here,
        # without the session's dispatch per message.
        pos, chunks, unpack = start, self.copy_chunks, _I32.unpack_from
        while pos + 5 <= end and buf[pos] == 0x64:
            stop = pos + 1 + unpack(buf, pos + 1)[0]
            if stop > end:
                break
            chunks.append(bytes(buf[pos + 5:stop]))
            pos = stop
        return pos


class Relay(Consumer):
    """Relays a statement's answer to the client as it comes, except the message types in `hide`.

    relay_errors: an ErrorResponse goes to the client too (and `failed` says so); otherwise it is
    kept back as `error`, for the caller to raise as its own."""

    def __init__(self, session: SessionPort, hide: frozenset[int], *, relay_errors: bool) -> None:
        super().__init__()
        self.session = session
        self.hide = hide
        self.relay_errors = relay_errors
        self.failed = False
        self.error: PgError | None = None

    def on_message(self, t: int, payload: bytes) -> None:
        if t in self.hide:
            return
        if t == ERROR:
            self.failed = True
            if not self.relay_errors:
                if self.error is None:
                    self.error = error_of(payload)
                return
        self.session.emit(bytes((t,)) + _I32.pack(len(payload) + 4) + bytes(payload))
        if t == 0x43:       # CommandComplete: the client sees each statement's result as it ends
            self.session.flush_client()


class Discard(Consumer):
    def on_message(self, msg_type: int, payload: bytes) -> None:
        pass
