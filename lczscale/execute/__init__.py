"""Executors: the same plan run serially (reference semantics) or on a Dask cluster."""
