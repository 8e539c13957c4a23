"""The commands that make something to look at or share from a finished cube: ``plot`` (a PNG),
``export`` (COG / GeoTIFF / NetCDF), ``pyramid`` (browsing overviews), ``serve`` (a web map)
and ``stac`` (a STAC catalogue)."""

from __future__ import annotations

import argparse
import sys

from lczscale.cli.common import print_json
from lczscale.errors import LczscaleError


def cmd_plot(a: argparse.Namespace) -> int:
    """``lczscale plot``: a PNG of a cube region, its class fractions or a confusion matrix."""
    from lczscale.browse.export import checked_bbox
    from lczscale.browse.plot import plot_confusion_file, plot_cube, plot_cube_fractions
    from lczscale.io.out_path import check_writable_out

    if a.bbox is not None:
        checked_bbox(a.bbox)  # the rule map and export apply: no silently swapped box
    check_writable_out(a.out, "plot --out", "file")
    if a.confusion:
        if a.cube or a.fractions:
            raise LczscaleError("plot --confusion EVAL.json draws an evaluation, not a cube: "
                                "give either CUBE (map or --fractions) or --confusion")
        path = plot_confusion_file(a.confusion, a.out, baseline=a.baseline)
    elif not a.cube:
        raise LczscaleError("plot needs CUBE (a map, or --fractions) or --confusion EVAL.json")
    elif a.fractions:
        path = plot_cube_fractions(a.cube, a.out, bbox=a.bbox, zone=a.zone, year=a.year,
                                   res=a.res)
    else:
        path = plot_cube(a.cube, a.out, bbox=a.bbox, zone=a.zone, year=a.year)
    print(path)
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    """``lczscale export``: a bbox of the cube as a COG, GeoTIFF or CF NetCDF file."""
    from lczscale.browse.export import export

    path = export(a.cube, a.bbox, a.out, a.format, zone=a.zone, year=a.year, crs=a.crs,
                  resolution=a.resolution, resampling=a.resampling, blocksize=a.blocksize,
                  overwrite=a.overwrite)
    print(path)
    return 0


def cmd_pyramid(a: argparse.Namespace) -> int:
    """``lczscale pyramid``: the cube's mode-downsampled overviews, written into it."""
    from lczscale.io.cube.pyramid import build_pyramid
    from lczscale.io.out_path import check_writable_out, local_path

    local = local_path(a.cube)
    if local is not None and local.is_dir():  # the overviews are written into the cube
        check_writable_out(a.cube, "pyramid CUBE", "dir")

    def progress(zone: str, level: int, chunks: int) -> None:
        if not a.quiet:
            print(f"{zone}: level {level}: {chunks} chunks", file=sys.stderr)

    print_json(build_pyramid(a.cube, a.zone, threads=a.threads, on_level=progress))
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    """``lczscale serve``: serve the cube's web map, or write it as static files (--static)."""
    from lczscale.browse.serve import Limits, export_static, serve

    if a.static:
        from lczscale.io.out_path import check_writable_out

        check_writable_out(a.static, "serve --static", "dir")
        print_json(export_static(a.cube, a.static, max_zoom=a.max_zoom, min_zoom=a.min_zoom,
                                 year=a.year))
        return 0
    serve(a.cube, host=a.host, port=a.port, limits=Limits(timeout=a.timeout, threads=a.threads))
    return 0


def cmd_stac(a: argparse.Namespace) -> int:
    """``lczscale stac``: a STAC Collection and Items describing the cube."""
    from lczscale.browse.stac_catalog import write_stac
    from lczscale.io.out_path import check_writable_out

    check_writable_out(a.out, "stac --out", "dir")
    print_json(write_stac(a.cube, a.out, collection_id=a.id, href=a.href))
    return 0
