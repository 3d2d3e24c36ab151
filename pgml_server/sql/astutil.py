"""Helpers over pglast parse trees shared by the router, the local compiler and the rewrites.

Finding pgml.* calls is a visitor over the tree, never string matching; rewritten trees are
printed back to SQL by pglast's RawStream, never spliced.
"""
from __future__ import annotations

import pglast.visitors
from pglast import ast
from pglast.stream import RawStream


def func_name(call: ast.FuncCall) -> str:
    return call.funcname[-1].sval.lower()


def is_pgml_call(node) -> bool:
    if not isinstance(node, ast.FuncCall):
        return False
    names = node.funcname
    return len(names) == 2 and names[0].sval.lower() == "pgml"


def pgml_calls(node) -> list[ast.FuncCall]:
    """Every pgml.* call inside `node` (a statement or any expression), in tree order."""
    found: list[ast.FuncCall] = []

    class Finder(pglast.visitors.Visitor):
        def visit_FuncCall(self, ancestors, call):
            if is_pgml_call(call):
                found.append(call)

    Finder()(node)
    return found


def has_pgml_call(node) -> bool:
    return bool(pgml_calls(node))


def param_count(node) -> int:
    """The highest $n in `node`: how many parameters a Bind of the statement supplies."""
    highest = 0

    class Finder(pglast.visitors.Visitor):
        def visit_ParamRef(self, ancestors, ref):
            nonlocal highest
            highest = max(highest, ref.number)

    Finder()(node)
    return highest


def statement_source(sql: str, raw: ast.RawStmt) -> str:
    """The text of one statement of a multi-statement string (locations are byte offsets)."""
    data = sql.encode()
    start = raw.stmt_location or 0
    end = start + raw.stmt_len if raw.stmt_len else len(data)
    return data[start:end].decode().strip()


def deparse(node) -> str:
    return RawStream()(node)
