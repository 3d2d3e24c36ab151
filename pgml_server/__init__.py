"""pgml-server: a PostgreSQL wire-protocol server that answers pgml.* machine-learning calls."""
__version__ = "0.1.0"
