"""Column kinds: what a PostgreSQL column type becomes for a model.

`column_kind(name, type_oid, type_name)` decides from the type OID and/or its `format_type` name
(as `pg_attribute`/`information_schema` spell it). The caller resolves domains to their base type
and says whether the type is an enum (`pg_type.typtype = 'e'`); enums arrive as text.

Kinds (and the single wire type the server then decodes, see sql.py):

- numeric: int2/int4/int8, oid, float4/float8, numeric(p,s)              → float8
- boolean: bool                                                          → float8 (0/1)
- categorical: text, varchar(n), char(n)/bpchar, "char", name, citext, enums → text
- temporal: date, timestamp, timestamptz, time, timetz, interval (subkind) → float8 (epoch seconds)
- array: fixed-length arrays of the numeric types or bool                → float8[]

Anything else is refused with a PgError naming the column and its type, and a hint saying what
to do instead: 0A000 (feature_not_supported) for types with no sensible model encoding (json,
bytea, xml, geometric, network, ranges, tsvector, text arrays, …) and for uuid (an identifier:
it carries no signal a model can learn), 42804 (datatype_mismatch) for money, which only needs a
cast.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from protocol import sqlstate
from protocol.errors import PgError

NUMERIC, BOOLEAN, CATEGORICAL, TEMPORAL, ARRAY = "numeric", "boolean", "categorical", "temporal", "array"
KINDS = (NUMERIC, BOOLEAN, CATEGORICAL, TEMPORAL, ARRAY)
TEMPORAL_SUBKINDS = ("date", "timestamp", "timestamptz", "time", "timetz", "interval")

# Wire types: the only three the server ever decodes (sql.py makes PostgreSQL produce them).
FLOAT8, TEXT, FLOAT8_ARRAY = "float8", "text", "float8[]"


@dataclass(frozen=True)
class ColumnKind:
    """One feature (or label) column as the preprocessing sees it."""
    name: str              # the column's name in the relation (unquoted)
    type_name: str         # the PostgreSQL type as given (e.g. 'character varying(10)'), for messages/analysis
    kind: str              # one of KINDS
    subkind: str | None = None   # temporal: one of TEMPORAL_SUBKINDS; array: 'numeric' or 'boolean'
    integer: bool = False  # an integer type (int2/4/8, oid, or an array of them): task inference uses it
    via: str | None = None  # a cast on the way to float8 where there is no direct one (bool: int4, oid: int8)

    @property
    def wire(self) -> str:
        """The wire type of the canonical expression: 'float8', 'text' or 'float8[]'."""
        if self.kind == CATEGORICAL:
            return TEXT
        if self.kind == ARRAY:
            return FLOAT8_ARRAY
        return FLOAT8

    def to_json(self) -> dict:
        return {"name": self.name, "type_name": self.type_name, "kind": self.kind,
                "subkind": self.subkind, "integer": self.integer, "via": self.via}

    @classmethod
    def from_json(cls, obj: dict) -> "ColumnKind":
        return cls(obj["name"], obj["type_name"], obj["kind"], obj.get("subkind"), bool(obj.get("integer")),
                   obj.get("via"))


# OIDs of the built-in types (pg_type.dat).
_OID_NAMES = {
    16: "bool", 21: "int2", 23: "int4", 20: "int8", 26: "oid", 700: "float4", 701: "float8", 1700: "numeric",
    25: "text", 1043: "varchar", 1042: "bpchar", 18: "char", 19: "name",
    1082: "date", 1114: "timestamp", 1184: "timestamptz", 1083: "time", 1266: "timetz", 1186: "interval",
    1000: "bool[]", 1005: "int2[]", 1007: "int4[]", 1016: "int8[]", 1028: "oid[]", 1021: "float4[]",
    1022: "float8[]", 1231: "numeric[]",
    # refused ones, by name for the messages
    17: "bytea", 114: "json", 3802: "jsonb", 142: "xml", 2950: "uuid", 790: "money", 3614: "tsvector",
    3615: "tsquery", 869: "inet", 650: "cidr", 829: "macaddr", 774: "macaddr8", 1560: "bit", 1562: "varbit",
    600: "point", 601: "lseg", 602: "path", 603: "box", 604: "polygon", 628: "line", 718: "circle",
    3904: "int4range", 3926: "int8range", 3906: "numrange", 3908: "tsrange", 3910: "tstzrange", 3912: "daterange",
    1009: "text[]", 1015: "varchar[]", 1014: "bpchar[]", 199: "json[]", 3807: "jsonb[]", 2951: "uuid[]",
    1001: "bytea[]", 1182: "date[]", 1115: "timestamp[]", 1185: "timestamptz[]", 1187: "interval[]",
    2249: "record", 705: "unknown", 2205: "regclass", 24: "regproc", 28: "xid", 5069: "xid8", 27: "tid",
    3220: "pg_lsn",
}

# Every spelling (format_type, typname, SQL aliases) → canonical typname.
_ALIASES = {
    "boolean": "bool", "bool": "bool",
    "smallint": "int2", "int2": "int2", "integer": "int4", "int": "int4", "int4": "int4",
    "bigint": "int8", "int8": "int8", "oid": "oid",
    "real": "float4", "float4": "float4", "double precision": "float8", "float8": "float8", "float": "float8",
    "numeric": "numeric", "decimal": "numeric",
    "text": "text", "character varying": "varchar", "varchar": "varchar", "character": "bpchar",
    "char": "bpchar", "bpchar": "bpchar", '"char"': "char", "name": "name", "citext": "citext",
    "date": "date", "timestamp without time zone": "timestamp", "timestamp": "timestamp",
    "timestamp with time zone": "timestamptz", "timestamptz": "timestamptz",
    "time without time zone": "time", "time": "time", "time with time zone": "timetz", "timetz": "timetz",
    "interval": "interval",
}
_VIA = {"bool": "int4", "oid": "int8"}
_NUMERIC_NAMES = {"int2", "int4", "int8", "oid", "float4", "float8", "numeric"}
_INTEGER_NAMES = {"int2", "int4", "int8", "oid"}
_TEXT_NAMES = {"text", "varchar", "bpchar", "char", "name", "citext"}

_DROP_HINT = "or leave it out of the relation (a view over it can select the columns to train on)"
_HINTS = {
    "uuid": "A uuid is an identifier: it carries no signal a model can learn. Leave it out of the relation "
            "(a view can select the other columns), or cast it in a view (col::text) if it truly is a category.",
    "json": "Extract the fields to learn from in a view over the relation, e.g. (col->>'price')::float8 as a "
            "number or col->>'color' as a category, " + _DROP_HINT + ".",
    "bytea": "Binary data has no model encoding: derive features from it in a view (e.g. length(col)), "
             + _DROP_HINT + ".",
    "money": "Cast it to a number in a view over the relation: col::numeric.",
    "text[]": "Arrays of text have no fixed encoding: pick elements in a view (col[1] as a category, "
              "cardinality(col) as a number), " + _DROP_HINT + ".",
}
_GENERIC_HINT = ("Cast it in a view over the relation: col::float8 to treat it as a number, col::text to treat "
                 "it as a category, " + _DROP_HINT + ".")
_TYPMOD = re.compile(r"\(\s*\d+(?:\s*,\s*-?\d+)?\s*\)")


def column_kind(name: str, type_oid: int | None = None, type_name: str | None = None, *,
                enum: bool = False) -> ColumnKind:
    """The kind of column `name` from its type OID and/or type name; PgError for a type models cannot use.

    The OID wins when it is a built-in type; the name is used for types without a fixed OID
    (citext) and for the messages. `enum=True` for an enum type (any OID): a category.
    """
    shown = type_name or _OID_NAMES.get(type_oid or -1) or f"oid {type_oid}"
    if enum:
        return ColumnKind(name, shown, CATEGORICAL)
    base, dims = _canonical(type_oid, type_name)
    if dims:
        if base in _NUMERIC_NAMES or base == "bool":
            return ColumnKind(name, shown, ARRAY, BOOLEAN if base == "bool" else NUMERIC,
                              integer=base in _INTEGER_NAMES, via=_VIA.get(base))
        raise _refuse(name, shown, "text[]" if base in _TEXT_NAMES else None)
    if base in _NUMERIC_NAMES:
        return ColumnKind(name, shown, NUMERIC, integer=base in _INTEGER_NAMES, via=_VIA.get(base))
    if base == "bool":
        return ColumnKind(name, shown, BOOLEAN, via="int4")
    if base in _TEXT_NAMES:
        return ColumnKind(name, shown, CATEGORICAL)
    if base in TEMPORAL_SUBKINDS:
        return ColumnKind(name, shown, TEMPORAL, base)
    if base == "money":
        raise PgError(sqlstate.DATATYPE_MISMATCH, f'column "{name}" has type {shown}, which is not a number',
                      hint=_HINTS["money"])
    raise _refuse(name, shown, base)


def _canonical(type_oid: int | None, type_name: str | None) -> tuple[str | None, int]:
    """(canonical base typname, number of array dimensions) of the type."""
    if type_oid in _OID_NAMES:
        spelled = _OID_NAMES[type_oid]
        dims = spelled.endswith("[]")
        return spelled.removesuffix("[]"), int(dims)
    if not type_name:
        return None, 0
    text = type_name.strip().lower()
    if text.startswith("_"):                     # pg_type.typname of an array type: _int4
        return _ALIASES.get(text[1:], text[1:]), 1
    text = _TYPMOD.sub("", text)                 # numeric(10,2), timestamp(3) with time zone, varchar(10)[]
    dims = text.count("[")
    base = " ".join(re.sub(r"\[\d*\]", " ", text).split())
    if base.endswith(" array"):                  # integer ARRAY
        base, dims = base[:-6].strip(), max(dims, 1)
    if base.startswith("interval "):             # interval day to second, interval year
        base = "interval"
    if "." in base and not base.startswith('"'):  # schema-qualified: public.citext
        base = base.rsplit(".", 1)[1]
    return _ALIASES.get(base, base), dims


def _refuse(name: str, shown: str, base: str | None) -> PgError:
    key = base if base in _HINTS else "json" if base in ("json", "jsonb") else None
    return PgError(sqlstate.FEATURE_NOT_SUPPORTED,
                   f'column "{name}" has type {shown}, which cannot be used as a feature',
                   hint=_HINTS.get(key, _GENERIC_HINT))
