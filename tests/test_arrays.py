"""sql/arrays.py: binary float8[]/real[] values into numpy. The one-struct-call path for a short
bound array and the numpy-view path for blocks must read the same values and refuse the same
inputs (NULL elements, other element types, two dimensions, a wrong length word), which then go
to the general decoder."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from pgml_server.sql import arrays
from protocol import types


def _array(values, elem=types.FLOAT8, ndim=1, has_null=0, element_length=None) -> bytes:
    code, size = ("d", 8) if elem == types.FLOAT8 else ("f", 4)
    head = struct.pack("!iiI", ndim, has_null, elem) + b"".join(struct.pack("!ii", len(values), 1)
                                                                   for _ in range(ndim))
    body = b"".join(struct.pack("!i", -1) if v is None else
                    struct.pack("!i", element_length or size) + struct.pack("!" + code, v) for v in values)
    return head + body


def _by_block(data: bytes):
    X = arrays.float_matrix(np.frombuffer(data, np.uint8).reshape(1, -1))
    return None if X is None else X[0]


@pytest.mark.parametrize("elem", [types.FLOAT8, types.FLOAT4])
@pytest.mark.parametrize("n", [1, 2, 10, 255, 256, 257, 1000])
def test_short_and_block_paths_read_the_same_values(elem, n):
    values = np.random.default_rng(n).standard_normal(n)
    values[::7] = np.nan
    data = _array(list(values), elem)
    got = arrays.float_array(data)
    expected = values if elem == types.FLOAT8 else values.astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, _by_block(data))
    assert got.dtype == np.float64 and got.flags.writeable
    np.testing.assert_array_equal(arrays.float_array(memoryview(data)), expected)


@pytest.mark.parametrize("data", [
    _array([1.0, None, 2.0], has_null=1),                       # NULL elements: the general decoder
    _array([1.0, 2.0], elem=types.INT4),                        # not a float array
    _array([1.0, 2.0], ndim=2),                                 # two dimensions
    _array([1.0, 2.0])[:-1],                                    # truncated
    _array([1.0, 2.0]) + b"\x00",                               # trailing byte
    b"\x00" * 12,                                               # shorter than a one-dimensional header
], ids=["null", "int4", "2d", "truncated", "trailing", "short"])
def test_what_is_not_a_plain_vector_is_refused_by_both(data):
    assert arrays.float_array(data) is None
    if len(data) >= 12 and struct.unpack_from("!i", data)[0] == 1:
        assert _by_block(data) is None


def test_a_wrong_element_length_word_is_refused():
    data = bytearray(_array([1.0, 2.0, 3.0]))
    struct.pack_into("!i", data, 20 + 12, 7)                    # the second element claims 7 bytes
    assert arrays.float_array(bytes(data)) is None
