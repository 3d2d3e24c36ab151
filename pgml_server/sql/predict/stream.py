"""The one-pass (stream) strategy for pgml.predict* inside SQL over tables.

pgml.predict* only as whole top-level target-list entries with a constant or bound model. The
upstream runs the query with each call replaced by its features cast to float8[] (binary); rows
stream back and are predicted per block, the prediction put in place. Runs on the client's own
upstream connection: its transaction, temp tables and role apply.
"""
from __future__ import annotations

import copy
import struct
from typing import Any

import numpy as np
from pglast import ast

from protocol import messages as m
from protocol import types
from protocol.errors import PgError

from ...functions.predict import batch_features, run_plan
from ...ml.cache import CachedModel
from ...pipeline.consumers import Collector, same_run
from ...pipeline.fifo import Consumer
from ...pipeline.internal import InternalStatement, run_internal
from ..arrays import float8_array_block, float8_arrays
from ..astutil import deparse, has_pgml_call, is_pgml_call, param_count
from ..encoding import format_code, with_formats
from .common import (OUTPUT, as_float8_array, encode_predictions, feature_input, model_node, predict_function,
                     resolve_model, type_name)

_STMT = "__pgml_rewrite"


def _nulls_as_nan(features):
    """`array_replace(features::float8[], NULL, 'NaN')`: a NULL element arrives as NaN, which the
    feature arrays decode it to anyway (missing), so every row keeps the binary layout of the
    others and the block path takes it (an array with a NULL element carries a NULL bitmap and a
    shorter body: each one ended a block, and with 5 % NULLs in 5 columns the rows went one by
    one, ~10× slower). A NULL array stays NULL. Row constructors are coalesced per value instead
    (common._canonical_row)."""
    null = ast.TypeCast(arg=ast.A_Const(isnull=True), typeName=type_name("float8"))
    nan = ast.TypeCast(arg=ast.A_Const(val=ast.String(sval="NaN")), typeName=type_name("float8"))
    return ast.FuncCall(funcname=(ast.String(sval="pg_catalog"), ast.String(sval="array_replace")),
                        args=(as_float8_array(features), null, nan), funcformat=0)
_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_BLOCK = 4096


class _Output:
    """Where a predicted value goes in the client's row."""
    __slots__ = ("index", "function", "model", "param", "canonical")

    def __init__(self, index: int, function: str, model: Any, param: int | None, canonical: bool = False) -> None:
        self.index = index          # column position
        self.function = function
        self.model = model          # constant project name / model id, or None when a parameter
        self.param = param          # 0-based parameter index holding the model
        self.canonical = canonical  # features are a row of pgml.feature() values (common.feature_input)


class StreamPredict:
    """The one-pass strategy (see module docstring)."""

    def __init__(self, sql: str, outputs: list[_Output], param_types: list[int]) -> None:
        self.sql = sql
        self.outputs = outputs
        self.param_types = param_types
        self.columns: list[tuple[str, int]] | None = None
        self.ncols = max(o.index for o in outputs) + 1 if outputs else 0   # set exactly by build()

    @classmethod
    def build(cls, stmt) -> "StreamPredict | None":
        if not isinstance(stmt, ast.SelectStmt) or stmt.op or stmt.intoClause or not stmt.targetList:
            return None
        # Where PostgreSQL would look at the predictions themselves (DISTINCT, GROUP BY, HAVING,
        # windows, ORDER BY a prediction's name or position) the one-pass rewrite would see features
        # instead: those go to the general strategy. So do target lists with `*`, whose output
        # column positions are only known after the upstream expands them.
        if stmt.distinctClause or stmt.groupClause or stmt.havingClause or stmt.windowClause:
            return None
        if any(_is_star(t.val) for t in stmt.targetList):
            return None
        if stmt.sortClause and _sorts_by_prediction(stmt):
            return None
        n_params = param_count(stmt)      # of the client's statement: model $n are replaced below
        stmt = copy.deepcopy(stmt)
        outputs, param_types = [], {}
        targets = list(stmt.targetList)
        for i, target in enumerate(targets):
            call = target.val
            if not is_pgml_call(call):
                continue
            name = predict_function(call)
            if name not in OUTPUT or not call.args:
                return None
            model = model_node(call)
            if isinstance(model, ast.A_Const) and not model.isnull:
                out = _Output(i, name, getattr(model.val, "sval", None) or getattr(model.val, "ival", None), None)
            elif isinstance(model, ast.ParamRef):
                out = _Output(i, name, None, model.number - 1)
                param_types[model.number] = types.TEXT
            else:
                return None
            features, out.canonical = feature_input(call)
            outputs.append(out)
            targets[i] = ast.ResTarget(name=target.name or call.funcname[-1].sval.lower(),
                                       val=as_float8_array(features) if out.canonical else _nulls_as_nan(features))
        if not outputs:
            return None
        stmt.targetList = tuple(targets)
        # Any other pgml call left (e.g. inside WHERE) needs the general strategy.
        if has_pgml_call(stmt):
            return None
        # Every $n of the statement, not only the model ones: a client that declares no types
        # (node-postgres) binds as many values as the statement has parameters.
        plan = cls(deparse(stmt), outputs, [param_types.get(i, 0) for i in range(1, n_params + 1)])
        plan.ncols = len(targets)
        return plan

    # -- execution

    def _statement(self, param_oids, params=(), param_formats=(), result_formats=(), *, execute: bool = True):
        # The upstream parses with the parameter types the client declared (those it left open
        # are the ones inferred here), so it reads the values exactly as the client sent them.
        return InternalStatement(self.sql, _STMT, param_oids, params, param_formats, result_formats,
                                 describe=execute, execute=execute)

    async def _run(self, session, param_oids, params, param_formats, client_formats, emit_description: bool,
                   model_params: list, *, extended: bool) -> None:
        models = [await resolve_model(session, o.model if o.param is None else model_params[o.param])
                  for o in self.outputs]
        formats = _formats_for(client_formats, self.outputs, self.ncols)
        consumer = _StreamConsumer(session, self, models, client_formats, emit_description)
        await run_internal(session, self._statement(param_oids, params, param_formats, formats), consumer,
                           extended=extended)

    async def run_simple(self, session, sql: str) -> None:
        await self._run(session, self.param_types, [], [], [0], True, [], extended=False)

    async def run_extended(self, session, portal) -> None:
        raw = portal.raw_params
        await self._run(session, portal.prepared.param_oids, raw.params, raw.param_formats, portal.result_formats,
                        False, portal.params, extended=True)

    async def describe(self, session, prepared, portal) -> bytes:
        """ParameterDescription + RowDescription (statement) or RowDescription (portal) from the upstream."""
        declared = (prepared if prepared is not None else portal.prepared).param_oids
        consumer = await run_internal(session, self._statement(declared, execute=False), Collector(), extended=True)
        fields = list(consumer.fields or [])
        for out in self.outputs:
            f = fields[out.index]
            oid = OUTPUT[out.function]
            fields[out.index] = m.FieldDescription(f.name, 0, 0, oid, types.type_size(oid), -1, 0)
        if portal is not None:
            fields = with_formats(fields, portal.result_formats)
            return m.RowDescription(fields).encode() if fields else m.NoData().encode()
        oids = [o if o else types.TEXT for o in consumer.param_oids]
        if prepared is not None:
            prepared.param_oids = oids
        return m.ParameterDescription(oids).encode() + m.RowDescription(fields).encode()


def _is_star(node) -> bool:
    return isinstance(node, ast.ColumnRef) and any(isinstance(f, ast.A_Star) for f in node.fields)


def _sorts_by_prediction(stmt) -> bool:
    """ORDER BY names a prediction's output column (alias or position) rather than an expression."""
    names, positions = set(), set()
    for i, target in enumerate(stmt.targetList, start=1):
        if is_pgml_call(target.val):
            positions.add(i)
            names.add((target.name or target.val.funcname[-1].sval).lower())
    for sort in stmt.sortClause:
        node = sort.node
        if isinstance(node, ast.A_Const) and getattr(node.val, "ival", None) in positions:
            return True
        if isinstance(node, ast.ColumnRef) and len(node.fields) == 1 and \
                isinstance(node.fields[0], ast.String) and node.fields[0].sval.lower() in names:
            return True
        if has_pgml_call(node):
            return True
    return False


def _formats_for(client_formats: list[int], outputs: list[_Output], ncols: int) -> list[int]:
    """Result formats for the upstream: binary for feature columns, the client's choice elsewhere.
    One code per column: a single code would apply to every column (PostgreSQL's rule)."""
    n = max(ncols, max(o.index for o in outputs) + 1)
    formats = [format_code(client_formats, i) for i in range(n)]
    for o in outputs:
        formats[o.index] = 1
    return formats


def split_fields(payload: bytes) -> list[bytes | None]:
    """The column values of a DataRow payload, as slices."""
    n = _I16.unpack_from(payload, 0)[0]
    pos, out = 2, []
    unpack = _I32.unpack_from
    for _ in range(n):
        length = unpack(payload, pos)[0]
        pos += 4
        if length < 0:
            out.append(None)
        else:
            out.append(payload[pos:pos + length])
            pos += length
    return out


def _row_layout(payload: bytes) -> list[tuple[int, int]] | None:
    """(offset, length) of each value in a DataRow payload; None when a value is NULL."""
    n = _I16.unpack_from(payload, 0)[0]
    pos, layout = 2, []
    for _ in range(n):
        length = _I32.unpack_from(payload, pos)[0]
        if length < 0:
            return None
        layout.append((pos + 4, length))
        pos += 4 + length
    return layout


class _StreamConsumer(Consumer):
    """Turns the upstream's rows (features) into the client's rows (predictions), block by block."""

    def __init__(self, session, plan: StreamPredict, models: list[CachedModel], client_formats: list[int],
                 emit_description: bool) -> None:
        super().__init__()
        self.session = session
        self.plan = plan
        self.models = models
        self.client_formats = client_formats
        self.emit_description = emit_description
        self.rows: list[list] = []
        self.error: PgError | None = None

    def on_message(self, t: int, payload: bytes) -> None:
        if self.error is not None:
            return
        try:
            if t == 0x44:       # DataRow
                self.rows.append(split_fields(payload))
                if len(self.rows) >= _BLOCK:
                    self._flush_rows()
            elif t == 0x54:     # RowDescription
                if self.emit_description:
                    self._describe(payload)
            elif t == 0x43:     # CommandComplete
                self._flush_rows()
                self.session.emit(m.command_complete(m.CommandComplete.decode(payload).tag))
                self.session.flush_client()
            elif t == 0x45:
                self.error = PgError.from_fields(m.ErrorResponse.decode(payload).fields)
            elif t == 0x49:     # EmptyQueryResponse
                self.session.emit(m.EmptyQueryResponse().encode())
        except PgError as err:
            self.error = err

    @property
    def bulk(self) -> bool:
        # Whole blocks of rows can be rewritten with numpy when every prediction goes out as a
        # binary real (fixed width); text output has a width per value, so it goes row by row.
        return all(o.function == "predict" and format_code(self.client_formats, o.index) for o in self.plan.outputs)

    def on_rows(self, buf: bytes, start: int, end: int) -> int:
        """Rewrite a run of identically laid-out DataRows at once; return where the run stops."""
        if self.error is not None:
            return start
        try:
            self._flush_rows()      # rows taken one by one so far go out first, in order
        except PgError as err:
            self.error = err
            return start
        size = _I32.unpack_from(buf, start + 1)[0] + 1
        count = (end - start) // size
        if count < 2:
            return start
        block = np.frombuffer(buf, np.uint8, count * size, start).reshape(count, size)
        layout = _row_layout(bytes(block[0, 5:]))
        if layout is None:
            return start
        # Every row must match the first one in type byte, length and every field's length word.
        checks = [slice(0, 7)] + [slice(5 + off - 4, 5 + off) for off, _ in layout]
        k = same_run(block, checks)
        if k < 2:
            return start
        block = block[:k]
        try:
            self.session.emit(self._rewrite_block(block, layout).tobytes())
        except PgError as err:
            self.error = err
        return start + k * size

    def _rewrite_block(self, block: np.ndarray, layout: list[tuple[int, int]]) -> np.ndarray:
        k = block.shape[0]
        outputs = {o.index: (o, model) for o, model in zip(self.plan.outputs, self.models)}
        pieces = [None, block[:, 5:7]]      # message header (rebuilt below), column count
        for i, (off, length) in enumerate(layout):
            if i not in outputs:
                pieces.append(block[:, 5 + off - 4: 5 + off + length])
                continue
            out, model = outputs[i]
            X = batch_features(model, float8_array_block(block[:, 5 + off: 5 + off + length]), out.canonical)
            pred = np.asarray(run_plan(model, "predict", X), dtype=">f4").reshape(k, 1)
            pieces.append(np.broadcast_to(np.frombuffer(_I32.pack(4), np.uint8), (k, 4)))
            pieces.append(pred.view(np.uint8).reshape(k, 4))
        width = sum(p.shape[1] for p in pieces[1:])
        header = np.frombuffer(b"D" + _I32.pack(width + 4), np.uint8)
        pieces[0] = np.broadcast_to(header, (k, 5))
        return np.concatenate(pieces, axis=1)

    def _describe(self, payload: bytes) -> None:
        fields = list(m.RowDescription.decode(payload).fields)
        for out in self.plan.outputs:
            f = fields[out.index]
            oid = OUTPUT[out.function]
            fields[out.index] = m.FieldDescription(f.name, 0, 0, oid, types.type_size(oid), -1,
                                                   format_code(self.client_formats, out.index))
        self.session.emit(m.RowDescription(fields).encode())

    def _flush_rows(self) -> None:
        rows = self.rows
        if not rows:
            return
        self.rows = []
        for out, model in zip(self.plan.outputs, self.models):
            X = batch_features(model, float8_arrays([r[out.index] for r in rows]), out.canonical)
            pred = run_plan(model, out.function, X)
            encoded = encode_predictions(out.function, pred, bool(format_code(self.client_formats, out.index)))
            for r, v in zip(rows, encoded):
                r[out.index] = v
        emit = self.session.emit
        data_row = m.data_row
        emit(b"".join(data_row(r) for r in rows))
        self.session.flush_client()
