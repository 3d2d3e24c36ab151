"""The ML runtime: the model cache and its loader, signed artifacts, datasets, training/ (the
algorithm table, metrics, split, the worker process) and inference/ (compiled plans). Knows
nothing of sessions or SQL routing; reaches the upstream only through `db`."""
