"""The commands that make something to look at or share from a finished cube: ``plot`` (a PNG),
``export`` (COG / GeoTIFF / NetCDF), ``pyramid`` (browsing overviews), ``serve`` (a web map),
``stac`` (a STAC catalogue), ``zonal`` (class areas per polygon, as CSV or Parquet) and
``change`` (the change between two years: a layer in the cube and a transition matrix)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
    """``lczscale export``: a bbox of the cube as a COG, GeoTIFF or CF NetCDF file; one
    ``--product``, on the cube's grid, warped (``--crs``) or on the global LCZ map's lattice
    (``--grid global-lcz-map``)."""
    from lczscale.browse.export import export

    path = export(a.cube, a.bbox, a.out, a.format, product=a.product, grid=a.grid,
                  zone=a.zone, year=a.year, crs=a.crs, resolution=a.resolution,
                  resampling=a.resampling, blocksize=a.blocksize, overwrite=a.overwrite)
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


def cmd_change(a: argparse.Namespace) -> int:
    """``lczscale change``: the change layer between two years, written into the cube, and the
    transition matrix in km²; with --json the matrix ``{"from": {"to": km²}}`` (LCZ labels,
    over the --bbox or every zone) is the last line of stdout."""
    import json

    from lczscale.browse.export import checked_bbox
    from lczscale.config import ChangeConfig, load_yaml
    from lczscale.io.out_path import check_input, check_writable_out
    from lczscale.studies.change import change_between, plot_matrix

    cfg = load_yaml(a.config, ChangeConfig) if a.config else ChangeConfig()
    threshold = cfg.min_confidence if a.min_confidence is None else a.min_confidence
    if a.bbox is not None:
        checked_bbox(a.bbox)
    check_input(a.cube, "change CUBE", "dir", "give the cube `lczscale map` wrote")
    for path, what in ((a.plot, "change --plot"), (a.report, "change --report")):
        if path:
            check_writable_out(path, what, "file")
    result = change_between(a.cube, a.from_year, a.to_year, threshold, bbox=a.bbox,
                            overwrite=a.overwrite)
    if a.report:
        Path(a.report).write_text(json.dumps(result, indent=2))
    if a.plot:
        print(f"transition matrix: {plot_matrix(result, a.plot)}", file=sys.stderr)
    lines = [f"{result['variable']} written in {len(result['zones'])} zone(s): "
             + ", ".join(f"{z} ({v['blocks']} blocks)" for z, v in result["zones"].items())]
    lines += [f"{k}: {v}" for k, v in result["totals"].items()]
    if a.json:
        print("\n".join(lines), file=sys.stderr)
        print(json.dumps(result["matrix"]))
    else:
        print("\n".join(lines))
        for frm, row in result["matrix"].items():
            print(f"  {frm:>2} -> " + ", ".join(f"{to}: {km2:g} km²" for to, km2 in row.items()))
    return 0


def cmd_zonal(a: argparse.Namespace) -> int:
    """``lczscale zonal``: per polygon, year and class, the area (km²) and share, as a table."""
    from lczscale.browse.zonal import check_table_path, write_table, zonal_stats
    from lczscale.io.out_path import check_input, check_writable_out

    check_table_path(a.out)  # every input checked before the cube is read
    check_writable_out(a.out, "zonal --out", "file")
    check_input(a.polygons, "--polygons", "file",
                "give a GeoJSON, GeoPackage or GeoParquet file of polygons")
    table = zonal_stats(a.cube, a.polygons, year=a.year, id_field=a.id_field)
    print(write_table(table, a.out))
    return 0
