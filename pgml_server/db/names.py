"""Quoting of SQL identifiers: user-supplied names are always quoted, never spliced raw."""
from __future__ import annotations

import re

_SIMPLE = re.compile(r"[a-z_][a-z0-9_$]*\Z")


def quote_ident(name: str) -> str:
    """Quote an identifier exactly as PostgreSQL's quote_ident() does."""
    if "\x00" in name:
        raise ValueError("identifiers cannot contain NUL")
    if _SIMPLE.match(name):
        return name
    return '"' + name.replace('"', '""') + '"'


def split_qualified(name: str) -> list[str]:
    """Split `schema.table`, honouring double quotes (`"My Schema"."a.b"`); unquoted parts fold to lower case."""
    parts, buf, i, quoted_part = [], [], 0, False
    while i < len(name):
        ch = name[i]
        if ch == '"':
            quoted_part = True
            j = i + 1
            while j < len(name):
                if name[j] == '"':
                    if j + 1 < len(name) and name[j + 1] == '"':
                        buf.append('"')
                        j += 2
                        continue
                    break
                buf.append(name[j])
                j += 1
            i = j + 1
        elif ch == ".":
            parts.append("".join(buf) if quoted_part else "".join(buf).strip().lower())
            buf, quoted_part = [], False
            i += 1
        else:
            buf.append(ch)
            i += 1
    parts.append("".join(buf) if quoted_part else "".join(buf).strip().lower())
    return parts


def quote_qualified(name: str) -> str:
    return ".".join(quote_ident(p) for p in split_qualified(name))


def quote_ident_list(names: list[str]) -> str:
    return ", ".join(quote_ident(n) for n in names)


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
