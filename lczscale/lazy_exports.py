"""Re-export a package's public names without importing its modules until one is used.

A subpackage's ``__init__`` names what it offers (``__all__``), but importing one of its small
modules must not load its heavy ones: a Dask nanny preloads
``lczscale.execute.clusters.gpu_pin`` and must not import torch through ``lczscale.execute``;
``lczscale.io.cube.ledger`` must not bring xarray. So the names resolve on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, Sequence[str]]) -> tuple[
        list[str], Callable[[str], Any]]:
    """``(__all__, __getattr__)`` for ``package``, from ``{module: [names]}``."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(where[name]), name)

    return sorted(where), __getattr__
