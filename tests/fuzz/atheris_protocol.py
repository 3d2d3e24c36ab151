"""Coverage-guided fuzzing of the protocol/ decoders with atheris (`make fuzz`).

Not part of `make test` (it runs until stopped, or for -runs=N inputs). Every input is split by
its first byte into a target: the framer fed in random pieces, a frontend or backend message of
any type, a startup packet, or a typed value (text or binary). The only exception a decoder may
raise is PgError (ProtocolViolation included); anything else is a crash that atheris reports
with the input that caused it.

    make fuzz                                   # 200,000 inputs
    .venv/bin/python tests/fuzz/atheris_protocol.py -runs=1000000 -max_len=512
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import atheris  # noqa: E402

with atheris.instrument_imports():
    from protocol import messages as m
    from protocol import types
    from protocol.errors import PgError
    from protocol.framing import Framer

TYPE_OIDS = sorted(types.ELEMENT_OF) + sorted(set(types.ELEMENT_OF.values()))


def one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    fdp = atheris.FuzzedDataProvider(data)
    target = fdp.ConsumeIntInRange(0, 4)
    try:
        if target == 0:
            framer = Framer(startup=fdp.ConsumeBool(), max_message_size=fdp.ConsumeIntInRange(4, 1 << 20))
            while fdp.remaining_bytes():
                framer.feed(fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 64)))
                for frame in framer.frames():
                    if not framer.typed:
                        m.decode_startup_packet(frame.payload)
                        framer.set_typed()
                    else:
                        m.decode_frontend(frame.type, frame.payload)
        elif target == 1:
            m.decode_frontend(fdp.ConsumeIntInRange(0, 255), fdp.ConsumeBytes(fdp.remaining_bytes()))
        elif target == 2:
            m.decode_backend(fdp.ConsumeIntInRange(0, 255), fdp.ConsumeBytes(fdp.remaining_bytes()))
        elif target == 3:
            m.decode_startup_packet(fdp.ConsumeBytes(fdp.remaining_bytes()))
        else:
            oid = TYPE_OIDS[fdp.ConsumeIntInRange(0, len(TYPE_OIDS) - 1)]
            types.decode(oid, fdp.ConsumeBytes(fdp.remaining_bytes()), fdp.ConsumeBool())
    except PgError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
