"""Upstream access: the Executor contract and its asyncpg implementation, identifier quoting, and
`registry/`, which holds every SQL statement against the `pgml` schema."""
