"""Training: data-parallel, class-balanced, resumable, through the same chunk I/O as mapping.

``launch.run_training`` runs a job in-process or over ranks (``torchrun``, ``srun``); ``on_dask``
trains on a Dask cluster's workers; ``settings`` holds the typed job.
"""

from lczscale.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "lczscale.train.launch": ["run_training"],
        "lczscale.train.on_dask": ["train_on_dask"],
        "lczscale.train.settings": ["TrainConfig", "TrainJob"],
    },
)
