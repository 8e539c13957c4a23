"""Read one GDAL raster dataset with rasterio and print what GDAL sees as JSON.

Run with the side virtualenv's Python (rasterio ≥ 1.5, GDAL ≥ 3.12), never with the project's:
this script is the *independent* reader, so it must not import lczscale (nor anything from the
repository). Usage::

    python -I gdal_read_zarr.py 'ZARR:"/path/cube.zarr":/utm32/lcz:0' \
        [--window ROW0 COL0 HEIGHT WIDTH]... [--band N]

Prints one JSON object on stdout; the pixels of each ``--window`` (repeatable, read from band
``--band``) are under ``"reads"`` as ``{"window": [...], "dtype": ..., "values": [[...]]}``.
On failure it prints ``{"error": ..., "gdal_version": ...}`` and exits with status 2, so the
caller can tell "GDAL refused" from "the script crashed".
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
import warnings


def _describe(name: str, windows: list[list[int]], band: int) -> dict[str, object]:
    import rasterio
    from rasterio.windows import Window

    with warnings.catch_warnings():
        # Opening a Zarr root (a container of subdatasets) warns NotGeoreferenced; that is fine.
        warnings.simplefilter("ignore")
        ds = rasterio.open(name)
    with ds:
        crs = ds.crs
        out: dict[str, object] = {
            "gdal_version": rasterio.__gdal_version__,
            "rasterio_version": rasterio.__version__,
            "name": name,
            "driver": ds.driver,
            "count": ds.count,
            "width": ds.width,
            "height": ds.height,
            "crs_wkt": crs.to_wkt() if crs else None,
            "epsg": crs.to_epsg() if crs else None,
            "transform": list(ds.transform)[:6],  # affine a, b, c, d, e, f
            "nodata": ds.nodata,
            "dtype": ds.dtypes[band - 1] if 1 <= band <= ds.count else None,
            "subdatasets": list(ds.subdatasets),
            "tags": ds.tags(),
        }
        reads = []
        for row0, col0, height, width in windows:
            arr = ds.read(band, window=Window(col0, row0, width, height))  # type: ignore[arg-type]
            reads.append(
                {
                    "window": [row0, col0, height, width],
                    "dtype": str(arr.dtype),
                    "values": arr.tolist(),
                }
            )
        out["band"] = band
        out["reads"] = reads
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", help="GDAL dataset name, e.g. 'ZARR:\"/p/cube.zarr\":/utm32/lcz:0'")
    parser.add_argument(
        "--window",
        nargs=4,
        type=int,
        action="append",
        default=[],
        metavar=("ROW0", "COL0", "H", "W"),
    )
    parser.add_argument("--band", type=int, default=1, help="1-based band to read (default 1)")
    args = parser.parse_args(argv)
    try:
        out = _describe(args.name, args.window, args.band)
    except Exception as exc:
        try:
            import rasterio

            version = rasterio.__gdal_version__
        except Exception:
            version = None
        json.dump(
            {
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
                "gdal_version": version,
            },
            sys.stdout,
        )
        return 2
    if any(m == "lczscale" or m.startswith("lczscale.") for m in sys.modules):
        raise AssertionError("the independent GDAL reader imported lczscale")
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
