"""Reading and writing where the data lives: the plumbing, and the three families on it.

- ``sources``: embedding stores (TESSERA, AlphaEarth, any ``geoemb:`` Zarr), one module per layout;
- ``labels``: LCZ references (rasters, training polygons, So2Sat patches, cubes);
- ``cube``: the LCZ cube itself (store, outputs, ledger, lock, warping, pyramid);
- here: object stores and paths (``stores``, ``out_path``), retries, zarr calls, shards, GDAL's
  virtual file systems, COG files, input digests and the remote environment.
"""

from lczscale.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "lczscale.io.stores": ["open_store", "filesystem", "exists", "is_remote"],
        "lczscale.io.retry": ["retry_io"],
        "lczscale.io.out_path": ["check_writable_out", "check_input"],
    },
)
