"""The pgml.* functions answered by the server. Importing this package registers them all."""
from .base import FUNCTIONS, Function, Param, register  # noqa: F401
from . import builtins  # noqa: F401,E402

# TEMPORARY while the registry/training modules land: skip function families whose
# dependencies are missing. Removed once they exist.
import importlib as _importlib

for _name in ("load_dataset", "predict", "train"):
    try:
        _importlib.import_module(f"{__name__}.{_name}")
    except ImportError:
        pass
