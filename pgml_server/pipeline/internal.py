"""Statements the server runs on a client's own upstream connection, as one message sequence.

Every internal statement is Close/Close/Parse/[Bind/[Describe]/Execute | Describe]/Close with a name
of its own (never the client's unnamed statement or portal), ended by Sync, or by Flush when the
client's pipeline holds an open implicit transaction that the statement must join. The FIFO
entries it needs are counted here, from the messages built, not by hand at each caller.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from protocol import messages as m

from .fifo import Consumer
from .port import SessionPort
from .rules import EXT, SYNC

INTERNAL = "__pgml_internal"
FLUSH = b"H\x00\x00\x00\x04"
SYNC_MESSAGE = b"S\x00\x00\x00\x04"


@dataclass(frozen=True, slots=True)
class InternalStatement:
    sql: str
    name: str = INTERNAL
    param_oids: Sequence[int] = ()
    params: Sequence[bytes | None] = ()
    param_formats: Sequence[int] = ()
    result_formats: Sequence[int] = ()
    describe: bool = False        # Describe the portal: its RowDescription comes before the rows
    execute: bool = True          # False: only Describe the statement (ParameterDescription + RowDescription)
    # CopyData/CopyDone of a COPY FROM STDIN, sent right after Execute: bytes, or a tuple of
    # buffers (a large stream framed by memoryviews, joined only here)
    copy_data: bytes | tuple = b""

    def messages(self, *, sync: bool) -> tuple[bytes, list[int]]:
        """The bytes to send and the FIFO entry kinds their answers fill, in order."""
        name = self.name
        # Close the portal too: inside a transaction block a statement of ours that failed
        # before its closing Close leaves its portal open, and the next Bind of the name (a
        # ROLLBACK among them) would fail with 42P03 "cursor already exists".
        parts = [m.Close("P", name).encode(), m.Close("S", name).encode(),
                 m.Parse(name, self.sql, list(self.param_oids)).encode()]
        if self.execute:
            parts.append(m.Bind(name, name, list(self.param_formats), list(self.params),
                                list(self.result_formats)).encode())
            if self.describe:
                parts.append(m.Describe("P", name).encode())
            parts.append(m.Execute(name, 0).encode())
        else:
            parts.append(m.Describe("S", name).encode())
        kinds = [EXT] * (len(parts) + 1)          # ... and the closing Close
        if self.copy_data:
            # CopyData may follow Execute at once: the backend reads it when it enters COPY mode,
            # and ignores it if the statement failed before that. It is not answered.
            if isinstance(self.copy_data, tuple):
                parts.extend(self.copy_data)
            else:
                parts.append(self.copy_data)
        parts.append(m.Close("S", name).encode())
        if sync:
            parts.append(SYNC_MESSAGE)
            kinds.append(SYNC)
        else:
            parts.append(FLUSH)
        return b"".join(parts), kinds


def ends_with_sync(session: SessionPort, extended: bool) -> bool:
    """Sync unless the client's pipeline has an implicit transaction open (an Execute since its
    last Sync): a Sync would commit it under the client, so the statement joins it with Flush."""
    return not (extended and session.batch_dirty)


async def run_internal(session: SessionPort, stmt: InternalStatement, consumer: Consumer, *,
                       extended: bool) -> Consumer:
    """Send `stmt` for `consumer`, wait for every answer, raise the upstream's error if any."""
    data, kinds = stmt.messages(sync=ends_with_sync(session, extended))
    session.send_internal(data, kinds, consumer)
    await consumer.done
    error = getattr(consumer, "error", None)
    if error is not None:
        raise error
    return consumer
