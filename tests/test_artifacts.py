"""Signed model artifacts: round trip, and refusal of anything not signed with our key — before unpickling."""
import pickle

import pytest
from sklearn.linear_model import LinearRegression

from pgml_server.ml import artifacts
from pgml_server.ml.artifacts import ArtifactSignatureError


class _Boom:
    """Unpickling this would run code: the test fails if it ever is."""

    def __reduce__(self):
        return (pytest.fail, ("a forged artifact was unpickled",))


def test_round_trip():
    key = artifacts.new_key()
    model = LinearRegression().fit([[0.0], [1.0], [2.0]], [1.0, 3.0, 5.0])
    blob = artifacts.dumps_model(key, model)
    assert blob.startswith(b"PGMLv1") and len(key) == 32 and artifacts.new_key() != key
    assert artifacts.loads_model(key, blob).predict([[3.0]])[0] == pytest.approx(7.0)
    assert artifacts.verify(key, artifacts.sign(key, b"payload")) == b"payload"


@pytest.mark.parametrize("tamper", [
    lambda blob: blob[:-1] + bytes([blob[-1] ^ 1]),       # payload changed
    lambda blob: blob[:10] + bytes([blob[10] ^ 1]) + blob[11:],  # signature changed
    lambda blob: b"PGMLv2" + blob[6:],                  # unknown tag
    lambda blob: blob[6:],                              # no tag at all
    lambda blob: blob[:20],                             # truncated
])
def test_tampered_artifacts_are_refused_before_unpickling(tamper):
    key = artifacts.new_key()
    with pytest.raises(ArtifactSignatureError) as err:
        artifacts.loads_model(key, tamper(artifacts.sign(key, pickle.dumps(_Boom()))))
    assert err.value.sqlstate == "XX001" and err.value.hint


def test_forged_pickle_with_another_key_is_refused():
    blob = artifacts.sign(artifacts.new_key(), pickle.dumps(_Boom()))
    with pytest.raises(ArtifactSignatureError, match="signature does not match"):
        artifacts.loads_model(artifacts.new_key(), blob)
    with pytest.raises(ArtifactSignatureError):
        artifacts.loads_model(artifacts.new_key(), pickle.dumps(_Boom()))  # a bare pickle


def test_empty_key_is_a_bug():
    with pytest.raises(ValueError):
        artifacts.sign(b"", b"x")
