"""One raw-protocol exchange with a server: what the tests send when a client library's exact
messages matter (e.g. a Parse that declares no parameter types, as node-postgres sends)."""
from __future__ import annotations

import socket

from protocol import messages as m
from protocol.framing import Framer


def exchange(port: int, *messages, host: str = "127.0.0.1", user: str = "postgres") -> list[tuple[str, object]]:
    """Log in, send `messages` in one packet (they should end with Sync), and return the answers up
    to its ReadyForQuery, decoded (ErrorResponse as 'E:<SQLSTATE>:<message>')."""
    framer = Framer()
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(m.StartupMessage({"user": user, "database": "postgres"}).encode())
        answers: list[tuple[str, object]] = []
        sent = False
        while True:
            frame = framer.next_frame()
            if frame is None:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("closed")
                framer.feed(data)
                continue
            kind = chr(frame.type)
            if kind == "Z" and not sent:
                sock.sendall(b"".join(x.encode() for x in messages))
                sent = True
                continue
            if not sent or kind in "SKNA":     # ParameterStatus, BackendKeyData, notices, notifications
                continue
            if kind == "E":
                fields = m.ErrorResponse.decode(bytes(frame.payload)).fields
                answers.append(("E", f"{fields.get('C')}:{fields.get('M')}"))
            elif kind == "t":
                answers.append(("t", m.ParameterDescription.decode(bytes(frame.payload)).oids))
            elif kind == "D":
                answers.append(("D", m.DataRow.decode(bytes(frame.payload)).values))
            else:
                answers.append((kind, None))
            if kind == "Z":
                break
        sock.sendall(m.Terminate().encode())
    return answers
