"""Fixtures are plugins in tests/fix_*.py, as in psycopg's test suite."""
pytest_plugins = ["tests.fix_servers"]
