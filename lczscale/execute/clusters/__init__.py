"""Start the Dask cluster a run asks for: local, SLURM, Kubernetes, or an existing scheduler.

One GPU and one Dask thread per worker everywhere, so the cube's bytes do not depend on the
platform. The settings themselves are ``lczscale.config.clusters``.
"""

from lczscale.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "lczscale.execute.clusters.start": ["open_cluster", "ClusterStartError"],
        "lczscale.execute.clusters.kubernetes_cluster": ["write_manifests"],
    },
)
