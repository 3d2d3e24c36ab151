"""The pgml.* functions answered by the server. Importing this package registers them all."""
from .base import FUNCTIONS, Function, Param, register  # noqa: F401
from . import builtins, explain, load_dataset, predict, schedule, train  # noqa: F401,E402
