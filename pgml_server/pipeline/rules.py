"""The one table of the FIFO: which frontend message queues which answer, and which upstream
message finishes an entry.

The session's general path (`_pump_frames`, `_account`) and both relay fast paths
(`_forward_packet`, `_relay_packet`) decide with these definitions only, so they cannot drift
apart. PostgreSQL's own rules: every extended-protocol message is answered by one final message
(ParseComplete, BindComplete, ..., or an ErrorResponse, after which the backend skips to Sync); a
Sync, a simple Query and a FunctionCall are answered up to ReadyForQuery; Flush and COPY data
are not answered at all.
"""
from __future__ import annotations

import re

# FIFO entry kinds (pipeline.fifo.Pending.kind)
EXT = 0        # one extended-protocol message (Parse/Bind/Describe/Execute/Close)
SYNC = 1       # Sync: answered by ReadyForQuery
SIMPLE = 2     # simple Query or FunctionCall: answered by ... ReadyForQuery; ErrorResponse is not final

# Frontend message types
Q, P, B, D, E, S, H, C, X, F = (ord(c) for c in "QPBDESHCXF")
COPY_DATA, COPY_DONE, COPY_FAIL = ord("d"), ord("c"), ord("f")
# Backend message types the FIFO looks at
READY, ERROR, NOTICE, DATA_ROW = ord("Z"), ord("E"), ord("N"), ord("D")

# Frontend message type -> the kind of FIFO entry its answer fills. Types absent here (Flush,
# CopyData, CopyDone, CopyFail, Terminate) get no answer of their own.
ANSWERED_BY: dict[int, int] = {Q: SIMPLE, F: SIMPLE, P: EXT, B: EXT, D: EXT, C: EXT, E: EXT, S: SYNC}

# Response types that finish one extended-protocol message.
EXT_DONE = frozenset(b"123TnCIsE")
# Asynchronous messages PostgreSQL may send at any time; they always go to the client.
ASYNC = frozenset(b"NAS")

_PGML = re.compile(rb"pgml", re.IGNORECASE)


def forwarded_kind(t: int, payload) -> int | None:
    """The entry a forwarded message of type t queues (None: it is not answered).

    A Flush with a body is malformed: PostgreSQL answers it with 08P01 and skips to Sync, so it
    has an answer to wait for like an extended-protocol message (found by the fuzz test)."""
    kind = ANSWERED_BY.get(t)
    if kind is None and t == H and len(payload):
        return EXT
    return kind


# The same two rules as tables the relay fast paths index per message without a function call:
# ANSWER_KIND[t] is ANSWERED_BY.get(t); FINISHED_BY[kind] is the set of types that finish it.
ANSWER_KIND: tuple[int | None, ...] = tuple(ANSWERED_BY.get(t) for t in range(256))
FINISHED_BY: tuple[frozenset, ...] = (EXT_DONE, frozenset((READY,)), frozenset((READY,)))   # EXT, SYNC, SIMPLE


def finishes(kind: int, t: int) -> bool:
    """Whether backend message type t is the last answer to an entry of `kind`."""
    return t in FINISHED_BY[kind]


def skips_to_sync(kind: int, t: int) -> bool:
    """An ErrorResponse to an extended-protocol message: the backend discards everything up to Sync."""
    return kind == EXT and t == ERROR


def mentions_pgml(data) -> bool:
    """Whether a message may concern pgml-server at all (a bytes search: nanoseconds). Only such
    SQL is parsed; everything else is forwarded as it came."""
    return _PGML.search(data) is not None
