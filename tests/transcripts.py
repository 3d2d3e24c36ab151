"""Transcripts of the client programs under tests/clients/: one `name: value` line per check.

A program runs once against the upstream directly and once through pgml-server; the tests compare
the lines that do not call pgml (the upstream has no pgml.* functions) and look at the pgml lines'
values on their own.
"""
from __future__ import annotations

import difflib
import subprocess


def run(cmd: list[str], *, timeout: float, cwd=None, env=None) -> str:
    """The program's stdout; a failed run fails the test with its whole output."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, encoding="utf-8", errors="replace",
                          timeout=timeout, cwd=cwd, env=env)
    assert proc.returncode == 0, (f"{cmd[0]} exited with {proc.returncode}\n--- stdout\n{proc.stdout}"
                                  f"\n--- stderr\n{proc.stderr}")
    return proc.stdout


def lines(transcript: str, *, pgml: bool | None = None, exclude: tuple[str, ...] = ()) -> list[str]:
    """The transcript's lines; pgml=False: without the `pgml.*` ones, True: only those."""
    out = []
    for line in transcript.splitlines():
        name = line.split(": ", 1)[0]
        if pgml is not None and name.startswith("pgml.") != pgml:
            continue
        if any(part in name for part in exclude):
            continue
        out.append(line)
    return out


def values(transcript: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in transcript.splitlines() if ": " in line)


def diff(direct: list[str], relayed: list[str]) -> str:
    return "\n".join(difflib.unified_diff(direct, relayed, "direct", "through pgml-server", lineterm=""))
