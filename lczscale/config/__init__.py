"""Typed settings, read from YAML or flags: what a map run is, and where its workers run.

- ``settings``: the map run and its parts (grid, stitching, inference, cube, outputs, faults);
- ``clusters``: where the Dask workers run (local, SLURM, Kubernetes, an existing scheduler);
- ``screening``: the allow-list that keeps secrets out of every stored or sent setting;
- ``files``: reading a settings file, and pydantic errors as one line.

Settings never change the planning core (``lczscale.core`` takes its own small types), and
cluster settings never enter a cube's provenance.
"""

from lczscale.config.settings import (
    ChangeConfig,
    CubeConfig,
    FaultConfig,
    GridConfig,
    InferenceConfig,
    MapConfig,
    ModelConfig,
    OutputsConfig,
    StitchConfig,
    StrictSettings,
    auto_overlap,
    dump_yaml,
    load_yaml,
    parse_years,
    reject_credentials,
    reject_secret_options,
)

__all__ = [
    "ChangeConfig",
    "CubeConfig",
    "FaultConfig",
    "GridConfig",
    "InferenceConfig",
    "MapConfig",
    "ModelConfig",
    "OutputsConfig",
    "StitchConfig",
    "StrictSettings",
    "auto_overlap",
    "dump_yaml",
    "load_yaml",
    "parse_years",
    "reject_credentials",
    "reject_secret_options",
]
