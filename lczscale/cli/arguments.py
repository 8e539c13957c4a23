"""The ``lczscale`` command line's argparse definition: every command, its flags and help, and
which ``cmd_*`` function runs it."""

from __future__ import annotations

import argparse

from lczscale.cli.cube_commands import (
    cmd_change,
    cmd_export,
    cmd_plot,
    cmd_pyramid,
    cmd_serve,
    cmd_stac,
    cmd_zonal,
)
from lczscale.cli.pipeline_commands import (
    cmd_deploy_kubernetes,
    cmd_map,
    cmd_synth,
    cmd_train,
)
from lczscale.cli.report_commands import cmd_coverage, cmd_eval, cmd_status
from lczscale.cli.study_commands import cmd_demo, cmd_experiment

# ``lczscale --help``'s description
DESCRIPTION = ("``lczscale`` command line: synth | train | map | eval | status | plot | "
               "experiment | demo |\npyramid | serve | stac | export | zonal | change | deploy.")


def _bbox(text: str) -> tuple[float, float, float, float]:
    try:
        parts = tuple(float(v) for v in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(
            f"bbox must be MINLON,MINLAT,MAXLON,MAXLAT (four numbers), got {text!r}"
        )
    return parts  # type: ignore[return-value]


def _count(text: str) -> int:
    """A whole number ≥ 0 (argparse turns the error into a one-line usage message, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 0, got {text!r}")
    return value


def _metres(text: str) -> float:
    """A length in metres > 0."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a length in metres > 0, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    """The ``lczscale`` argument parser; each command's ``func`` is the ``cmd_*`` running it."""
    p = argparse.ArgumentParser(prog="lczscale", description=DESCRIPTION)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write a synthetic world in the real on-disk formats")
    s.add_argument("dir")
    s.add_argument("--cities", type=int, default=2, help="the first N built-in sites (1..12)")
    s.add_argument("--sites", nargs="+", metavar="NAME", help="the built-in sites by name "
                   "instead (zurich basel nairobi london paris bogota sydney tokyo cairo delhi "
                   "sao_paulo chicago): e.g. sydney, under the real Sydney references")
    s.add_argument("--size-km", type=float, default=4.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--years", type=int, nargs="+", default=[2023, 2024])
    s.add_argument("--layout", nargs="+", default=["tessera-zarr"],
                   choices=["tessera-zarr", "tessera-tiles", "aef-cogs", "aef-mosaic",
                            "tessera-icechunk", "tessera-dclimate-zarr"],
                   help="embedding layouts to write (DIR/embeddings.zarr, DIR/tiles/, DIR/aef/, "
                   "DIR/aef-mosaic.zarr, DIR/dclimate.icechunk + DIR/dclimate.registry/, "
                   "DIR/dclimate.zarr); the same world in each")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--changing-city", action="store_true", help="the last city changes in the "
                   "middle year (farmland D -> open low-rise 6, scattered trees B -> large "
                   "low-rise 8): truth.zarr holds every year, lcz_coarse_<year>/ each year's "
                   "labels, world.json the change areas")
    s.set_defaults(func=cmd_synth)

    t = sub.add_parser("train", help="train the attention U-Net on labelled embeddings")
    t.add_argument("--source", required=True)
    t.add_argument("--labels", required=True, action="extend", nargs="+",
                   help="label sources, one per city: FILE (named by its stem), NAME=FILE, or a "
                   "directory of label files (e.g. the synthetic world's lcz_coarse/)")
    t.add_argument("--out", required=True, help="model directory (safetensors + JSON); a run "
                   "finding resumable state of the same job there continues from it")
    t.add_argument("--nproc", type=int, default=1, help="data-parallel ranks on this machine "
                   "(torchrun: gloo on CPU, NCCL on GPUs)")
    t.add_argument("--holdout-city", action="append", help="leave this city (label set name) "
                   "out of training, for transfer tests (repeatable)")
    t.add_argument("--restart", action="store_true", help="discard resumable state in --out")
    t.add_argument("--config", help="TrainConfig YAML")
    t.add_argument("--steps", type=int)
    t.add_argument("--data", choices=["stream", "memory"], help="stream (default): read each "
                   "drawn patch through a chunk cache, memory flat at any labelled area; "
                   "memory: read the labelled regions once and keep them (tiny sets)")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--year", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--bbox", type=_bbox)
    t.add_argument("--no-location", action="store_true", help="ablation: no lat/lon input")
    t.add_argument("--device", choices=["auto", "cpu", "cuda"])
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    m = sub.add_parser("map", help="map an AOI into an LCZ cube (resumes an existing cube)")
    m.add_argument("--source", help="embeddings: path or URL (local, s3://, https://)")
    m.add_argument("--source-kind", help="skip layout detection: tessera-icechunk, "
                   "tessera-dclimate-zarr, tessera-zarr, tessera-tiles, aef-cogs, aef-mosaic, "
                   "geoemb-zarr")
    m.add_argument("--overwrite", action="store_true", default=None,
                   help="remap tiles the cube holds from another provenance (model, code, "
                   "settings); without it such a run exits 2 and changes nothing")
    m.add_argument("--source-options", help="non-secret fsspec/S3 options for the source as "
                   "YAML, e.g. '{anon: true}' for the public TESSERA v1.1 store")
    m.add_argument("--min-s2-obs", type=int, help="mask pixels with fewer clear optical "
                   "observations as nodata (TESSERA v1.1 stores: s2_obs_count)")
    m.add_argument("--stac", help="STAC API URL (or stac-geoparquet file) to find the "
                   "embedding files in; needs --collection, --year and an AOI")
    m.add_argument("--collection", help="STAC collection id (with --stac)")
    m.add_argument("--grid", choices=["utm", "global"], help="cube lattice (default utm)")
    m.add_argument("--model")
    m.add_argument("--out")
    m.add_argument("--config", help="MapConfig YAML; flags override it")
    m.add_argument("--bbox", type=_bbox)
    m.add_argument("--geojson", help="AOI polygon (GeoJSON file)")
    m.add_argument("--year", type=int, help="the year to map (default: the source's latest)")
    m.add_argument("--years", metavar="YEARS", help="several years in one run and one ledger: "
                   "2018,2024, a range 2017-2025, or mixed 2018,2020-2022 (not with --year)")
    m.add_argument("--tile-size", type=int)
    m.add_argument("--patch-size", type=int)
    m.add_argument("--sharding", action="store_true")
    m.add_argument("--probabilities", action="store_true",
                   help="also write per-class probabilities (uint8, class x y x x)")
    m.add_argument("--fractions", nargs="?", const="hard", choices=["hard", "soft"],
                   help="also make 100 m LCZ fractions, majority and filtered LCZ, and the "
                   "per-tile seam-quality layer (an aggregation pass after the tiles); "
                   "'soft': fractions are the cells' mean blended probabilities (mixed "
                   "scenes; writes --probabilities too), not shares of the hard classes")
    m.add_argument("--executor", choices=["serial", "dask"])
    m.add_argument("--workers", type=int)
    m.add_argument("--scheduler", help="address of a running Dask scheduler")
    m.add_argument("--cluster", help="cluster YAML: kind local, slurm, kubernetes or address "
                   "(see deploy/*/cluster.yaml); --workers then does not apply")
    m.add_argument("--device", choices=["auto", "cpu", "cuda"])
    m.add_argument("--quiet", action="store_true")
    m.add_argument("--dry-run", action="store_true", help="plan the run and say what it would "
                   "cost (tiles, land share, input bytes, coverage gaps, tiles done, hours for "
                   "--workers from the stored benchmark rates); writes nothing")
    m.add_argument("--json", action="store_true", help="with --dry-run: the result as one "
                   "JSON object, the last line of stdout")
    m.add_argument("--rates", metavar="FILE_OR_DIR", help="with --dry-run: benchmark results "
                   "(.jsonl, or a folder of them) to project hours from (default: the "
                   "repository's benchmarks/results)")
    m.set_defaults(func=cmd_map)

    e = sub.add_parser("eval", help="score a cube against a reference (a cube or any label "
                       "file) with the LCZ Generator's measures and bootstrap intervals")
    e.add_argument("cube")
    e.add_argument("--truth", required=True, help="reference: an lczscale cube or anything "
                   "--labels takes (LCZ raster, GeoJSON/KML/KMZ training areas, So2Sat)")
    e.add_argument("--bootstrap", type=_count, default=200, metavar="N",
                   help="bootstrap replicates for the intervals (0: none; default 200)")
    e.add_argument("--block-m", type=_metres, default=1000.0, metavar="M",
                   help="bootstrap block side in metres for map references (default 1000)")
    e.add_argument("--baseline", help="coarse label raster to score as the naive baseline; "
                   "also the reference of the 100 m agreement")
    e.add_argument("--bbox", type=_bbox, metavar="MINLON,MINLAT,MAXLON,MAXLAT",
                   help="score only reference pixels inside this lon/lat box (one held-out city)")
    e.add_argument("--year", type=int)
    e.add_argument("--report", metavar="DIR",
                   help="write report.json, report.md and confusion PNGs to DIR")
    e.add_argument("--json", action="store_true", help="print the result as one JSON object")
    e.add_argument("--at", choices=["10m", "100m"], default="10m", help="10m (default): on "
                   "the cube's pixels; 100m: the cube's majority on the global LCZ map's lattice "
                   "against a --truth raster on that lattice, pixel for pixel")
    e.set_defaults(func=cmd_eval)

    st = sub.add_parser("status", help="done / stale / remaining tiles of a cube")
    st.add_argument("cube")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    cv = sub.add_parser("coverage", help="is an AOI covered in a TESSERA v1.1 store for a year "
                        "(years_complete, embedded tiles, refused pixels; exit 1 if not complete)")
    cv.add_argument("--source", required=True, help="the Icechunk store (path or s3:// URL)")
    cv.add_argument("--source-kind", help="skip layout detection (tessera-icechunk)")
    cv.add_argument("--source-options", help="fsspec/S3 options as YAML, e.g. '{anon: true}'")
    cv.add_argument("--year", type=int, required=True)
    cv.add_argument("--bbox", type=_bbox)
    cv.add_argument("--geojson")
    cv.add_argument("--json", action="store_true")
    cv.set_defaults(func=cmd_coverage)

    pl = sub.add_parser("plot", help="PNG of a cube region with the LCZ legend, of its class "
                        "fractions (--fractions), or of an evaluation's confusion matrix")
    pl.add_argument("cube", nargs="?", help="the cube (not with --confusion)")
    pl.add_argument("--out", required=True)
    pl.add_argument("--bbox", type=_bbox)
    pl.add_argument("--zone")
    pl.add_argument("--year", type=int)
    pl.add_argument("--fractions", action="store_true", help="small multiples of the class "
                    "fractions in --res cells instead of the map")
    pl.add_argument("--res", type=float, default=100.0, help="cell size of --fractions in the "
                    "zone's units (default 100 m)")
    pl.add_argument("--confusion", metavar="EVAL.json", help="draw the confusion matrix of an "
                    "evaluation (`lczscale eval --json` output or --report's report.json)")
    pl.add_argument("--baseline", action="store_true", help="with --confusion: the baseline's "
                    "matrix instead of the model's")
    pl.set_defaults(func=cmd_plot)

    ex = sub.add_parser("export", help="cut a bbox of the cube to a COG / GeoTIFF (LCZ colour "
                        "table embedded) or CF NetCDF")
    ex.add_argument("cube")
    ex.add_argument("--bbox", type=_bbox, required=True, metavar="MINLON,MINLAT,MAXLON,MAXLAT")
    ex.add_argument("--out", required=True)
    ex.add_argument("--format", choices=["cog", "geotiff", "netcdf"], default="cog")
    ex.add_argument("--zone", help="zone group (default: the one the bbox falls in)")
    ex.add_argument("--year", type=int, help="default: the cube's latest year")
    ex.add_argument("--crs", help="warp to this CRS (e.g. EPSG:4326), stitching every zone the "
                    "bbox touches; default: the zone's native grid")
    ex.add_argument("--resolution", type=float, help="pixel size with --crs, in its units "
                    "(default: 10 m, or its equivalent in degrees)")
    ex.add_argument("--resampling", choices=["nearest", "mode"], default="nearest",
                    help="with --crs: nearest (keeps 10 m detail) or mode (coarser targets)")
    ex.add_argument("--product", choices=["lcz", "confidence", "probability",
                                          "lcz_fraction_100m", "lcz_100m"], default="lcz",
                    help="what to write: lcz (default), confidence, probability (17 bands; "
                    "needs map --probabilities), lcz_fraction_100m (17 bands, 1/255) or lcz_100m")
    ex.add_argument("--grid", choices=["global-lcz-map"], help="with lcz_100m or "
                    "lcz_fraction_100m: made from the 10 m map on the global 100 m LCZ map's "
                    "pixel lattice (EPSG:4326, 0.000898315°), the bbox snapped outward to it")
    ex.add_argument("--blocksize", type=int, default=512, help="GeoTIFF tile side")
    ex.add_argument("--overwrite", action="store_true")
    ex.set_defaults(func=cmd_export)

    x = sub.add_parser("experiment", help="the studies' experiments: transfer to a held-out "
                       "city, coarse vs fine reference labels, year-to-year transfer")
    x.add_argument("kind", choices=["transfer", "reference", "year"])
    x.add_argument("--world", help="a synthetic world written by `lczscale synth`")
    x.add_argument("--config", help="ExperimentConfig YAML (source, coarse/fine label sets per "
                   "city with bbox, truth cube, …)")
    x.add_argument("--out", required=True, help="directory for models, cubes and report")
    x.add_argument("--holdout", action="append", help="city to test on (repeatable; default: "
                   "the last city)")
    x.add_argument("--steps", type=int)
    x.add_argument("--train-config", help="TrainConfig YAML for every training of the run")
    x.add_argument("--nproc", type=int, help="data-parallel ranks per training")
    x.add_argument("--json", action="store_true")
    x.add_argument("--quiet", action="store_true")
    x.set_defaults(func=cmd_experiment)

    d = sub.add_parser("demo", help="synthetic world → train → map → cube → picture + report")
    d.add_argument("--dir", default="lczscale-demo")
    d.add_argument("--workers", type=int, default=2)
    d.add_argument("--quick", action="store_true", help="smaller world and training (tests)")
    d.set_defaults(func=cmd_demo)

    py = sub.add_parser("pyramid", help="mode-downsampled overviews of lcz (browsing "
                        "pyramid, resumable): ZONE/overviews/K/lcz")
    py.add_argument("cube")
    py.add_argument("--zone", action="append", help="only this zone (repeatable)")
    py.add_argument("--threads", type=int, default=4)
    py.add_argument("--quiet", action="store_true")
    py.set_defaults(func=cmd_pyramid)

    sv = sub.add_parser("serve", help="web map of a cube (slippy map, legend, class on click)")
    sv.add_argument("cube")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--static", metavar="DIR", help="write a static web map (page + tiles "
                    "over the data) to DIR instead of serving")
    sv.add_argument("--max-zoom", type=int, default=15, help="deepest zoom of --static")
    sv.add_argument("--min-zoom", type=int, default=0, help="shallowest zoom of --static")
    sv.add_argument("--year", type=int, help="year of --static (default: the latest)")
    sv.add_argument("--timeout", type=float, default=30.0, help="seconds a tile or point may "
                    "take before the server answers 503 (default: 30)")
    sv.add_argument("--threads", type=int, default=16, help="requests handled at once; more "
                    "wait in a short line, then get 503 (default: 16)")
    sv.set_defaults(func=cmd_serve)

    sc = sub.add_parser("stac", help="STAC Collection + Items describing the cube")
    sc.add_argument("cube")
    sc.add_argument("--out", required=True, help="directory for collection.json and items")
    sc.add_argument("--id", default="lczscale-lcz", help="collection id")
    sc.add_argument("--href", help="URL of the cube as STAC users will reach it (default: "
                    "the CUBE argument)")
    sc.set_defaults(func=cmd_stac)

    ch = sub.add_parser("change", help="the change between two years, written into the cube "
                        "(lcz_change_FROM_TO per zone), and its transition matrix in km²")
    ch.add_argument("cube")
    ch.add_argument("--from", dest="from_year", type=int, required=True, metavar="YEAR")
    ch.add_argument("--to", dest="to_year", type=int, required=True, metavar="YEAR")
    ch.add_argument("--bbox", type=_bbox, metavar="MINLON,MINLAT,MAXLON,MAXLAT",
                    help="only the blocks under this lon/lat box; the matrix counts its pixels")
    ch.add_argument("--min-confidence", type=int, metavar="N", help="confidence (0-255) both "
                    "years need for a changed class to count; below it 'uncertain' (default: "
                    "the config's, 128)")
    ch.add_argument("--config", help="ChangeConfig YAML (min_confidence)")
    ch.add_argument("--overwrite", action="store_true", help="make the zones' layer again from "
                    "empty (to change its --min-confidence)")
    ch.add_argument("--json", action="store_true", help="last line of stdout: the matrix "
                    '{"from": {"to": km2}} keyed by LCZ labels (1-10, A-G)')
    ch.add_argument("--report", metavar="JSON", help="write the full result (per zone, "
                    "totals, encoding) to this file")
    ch.add_argument("--plot", metavar="PNG", help="draw the transition matrix")
    ch.set_defaults(func=cmd_change)

    zs = sub.add_parser("zonal", help="per polygon, year and class: area (km²) and share, "
                        "nodata share and mean confidence, as CSV or Parquet")
    zs.add_argument("cube")
    zs.add_argument("--polygons", required=True, metavar="AREAS",
                    help="polygons in any CRS: .geojson, .gpkg or .parquet (GeoParquet)")
    zs.add_argument("--out", required=True, metavar="STATS", help="the table: .csv or .parquet")
    zs.add_argument("--year", type=int, action="extend", nargs="+",
                    help="year(s) to count (repeatable; default: every year of the cube)")
    zs.add_argument("--id-field", help="the polygons' id field (default: a unique 'id' or "
                    "'fid' field, else the row number)")
    zs.set_defaults(func=cmd_zonal)

    dp = sub.add_parser("deploy", help="render deployment files for a platform")
    dsub = dp.add_subparsers(dest="platform", required=True)
    k = dsub.add_parser("kubernetes", help="DaskJob (map), Indexed Job (DDP training) and "
                        "DaskCluster manifests with kustomizations: OUT/{map,train,cluster}/")
    k.add_argument("--cluster", required=True, help="cluster YAML with kind: kubernetes")
    k.add_argument("--map", required=True, help="MapConfig YAML the DaskJob's client runs")
    k.add_argument("--train", help="TrainJob JSON (e.g. MODEL_DIR/train_job.json) for the "
                   "training Job")
    k.add_argument("--ranks", type=int, help="data-parallel ranks (pods, one GPU each) of the "
                   "training Job; default: the cluster's workers")
    k.add_argument("--out", required=True, help="directory for the manifests")
    k.set_defaults(func=cmd_deploy_kubernetes)
    return p
