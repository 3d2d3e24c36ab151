"""The consumers of internal statements' answers (pipeline/consumers.py), without a server."""
import asyncio
import struct


def test_session_collector_takes_runs_of_copy_data_as_blocks():
    """The session hands runs of CopyData to the collector at once: equal-length messages are taken
    in one piece, a message of another length stops the run; messages of different lengths are then
    taken one after another (rows of text), a partial one stops them; the bytes in order."""
    from pgml_server.pipeline.consumers import Collector

    def copy_data(body: bytes) -> bytes:
        return b"d" + struct.pack("!i", len(body) + 4) + body

    async def run():
        collector = Collector(decode_rows=True, quiet=True)
        rows = [bytes([i]) * 9 for i in range(5)]
        stream = b"".join(copy_data(r) for r in rows) + copy_data(b"longer row") + copy_data(b"tail")[:6]
        after = collector.on_copy_data(stream, 0, len(stream))
        assert after == 5 * 14 and collector.copy_chunks == [b"".join(rows)]
        # messages of different lengths are taken one by one, up to the partial one
        longer = copy_data(b"longer row")
        assert collector.on_copy_data(stream, after, len(stream)) == after + len(longer)
        assert collector.copy_chunks == [b"".join(rows), b"longer row"]
        single = copy_data(b"x")
        assert collector.on_copy_data(single, 0, len(single)) == len(single)
        assert collector.on_copy_data(single, 0, 3) == 0                   # not even a header: nothing
        assert collector.copy_chunks[-1] == b"x"
    asyncio.run(run())
