"""Run a plan: one executor interface (serial, or Dask on any cluster) for every pass of a map.

``run.run_map`` takes the writer lock, opens the executor, creates the cube and runs the 10 m
tile pass (``tile``) and the 100 m products pass (``products_pass``); ``status`` tells how far a
run got. Clusters (local, SLURM, Kubernetes, an address) are started by ``clusters``.
"""

from lczscale.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "lczscale.execute.run": ["run_map", "MapReport", "open_executor"],
        "lczscale.execute.executor": ["Executor", "Pass", "SerialExecutor"],
        "lczscale.execute.cluster_executor": ["DaskExecutor"],
        "lczscale.execute.status": ["cube_status"],
    },
)
