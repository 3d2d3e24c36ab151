"""Signed model artifacts: pickles that the server only unpickles when it wrote them itself.

Model bytes live in the upstream (`pgml.files`), and unpickling runs code; so anyone who can write
that table could otherwise run code in the server. Each artifact is therefore
`b'PGMLv1' + HMAC-SHA256(key, payload) + payload`, and `verify` checks tag and signature (in
constant time) before a single byte is unpickled. The key is the server secret from the operator
or from the registry.
"""
from __future__ import annotations

import hashlib
import hmac
import pickle
import secrets
from typing import Any

TAG = b"PGMLv1"
DIGEST_SIZE = hashlib.sha256().digest_size  # 32
KEY_SIZE = 32
DATA_CORRUPTED = "XX001"


class ArtifactSignatureError(Exception):
    """A model artifact that is not ours (or was altered): refused, never unpickled."""

    sqlstate = DATA_CORRUPTED

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.detail = None
        self.hint = hint or ("The model bytes in pgml.files were not written by a server with this key. "
                             "Retrain the model, or start the server with the key that signed it.")


def new_key() -> bytes:
    """A fresh random signing key (32 bytes)."""
    return secrets.token_bytes(KEY_SIZE)


def sign(key: bytes, payload: bytes) -> bytes:
    """`payload` with our tag and its HMAC-SHA256 in front."""
    _check_key(key)
    return TAG + hmac.new(key, payload, hashlib.sha256).digest() + payload


def verify(key: bytes, blob: bytes) -> bytes:
    """The payload of a signed `blob`; raises ArtifactSignatureError unless tag and signature match."""
    _check_key(key)
    blob = bytes(blob)
    if not blob.startswith(TAG):
        raise ArtifactSignatureError("model artifact has no PGMLv1 signature tag")
    if len(blob) < len(TAG) + DIGEST_SIZE:
        raise ArtifactSignatureError("model artifact is truncated")
    signature = blob[len(TAG):len(TAG) + DIGEST_SIZE]
    payload = blob[len(TAG) + DIGEST_SIZE:]
    expected = hmac.new(key, payload, hashlib.sha256).digest()
    if not hmac.compare_digest(signature, expected):
        raise ArtifactSignatureError("model artifact signature does not match: refusing to load it")
    return payload


def dumps_model(key: bytes, estimator: Any) -> bytes:
    """Pickle and sign a fitted estimator."""
    return sign(key, pickle.dumps(estimator, protocol=pickle.HIGHEST_PROTOCOL))


def loads_model(key: bytes, blob: bytes) -> Any:
    """Verify, then unpickle, an artifact written by `dumps_model` (or `sign` of a pickle)."""
    return pickle.loads(verify(key, blob))


def _check_key(key: bytes) -> None:
    # Key strength (≥ 16 bytes recommended) is the configuration's concern; an empty key is a bug.
    if not isinstance(key, (bytes, bytearray)) or not key:
        raise ValueError("the artifact key must be non-empty bytes")
