"""``lczscale train --labels GLOBAL_MAP --bbox BOX`` streamed over a 12-city world on five
continents: one label raster over every city — a sparse tiled GeoTIFF on the global 100 m LCZ
map's grid (the real map is one such file), and the world's own VRT mosaic — with a box that
picks cities in several UTM zones, north and south of the equator. The sample index written
beside the model holds regions of exactly the zones of the cities in the box (cross-zone
sampling from one label file), and training read its blocks through the cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.windows import Window

from lczscale.cli import main
from lczscale.synth.world import write_world

pytestmark = pytest.mark.integration
# London, Paris, Zurich, Basel (utm30-32), Cairo (utm36) and Nairobi (utm37, south)
BOX = (-10.0, -5.0, 40.0, 55.0)
WORLD_BOX = (-180.0, -60.0, 180.0, 80.0)
TRAIN = {"steps": 3, "batch_size": 4, "patch_size": 32, "log_every": 1, "checkpoint_every": 3,
         "prefetch": 1, "threads": 1}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("global-labels")
    summary = write_world(root / "w", cities=12, size_km=0.64, seed=0, years=(2024,),
                          truth_cube=False)
    config = root / "train.yaml"
    config.write_text(yaml.safe_dump(TRAIN))
    return {"summary": summary, "source": summary["embeddings"], "config": str(config),
            "vrt": summary["coarse_labels"],
            "tif": _global_geotiff(summary, root / "global_lcz.tif")}


def _global_geotiff(summary: dict[str, Any], path: Path) -> str:
    """One GeoTIFF over every city on the global map's grid (EPSG:4326, 0.000898° pixels,
    palette, ``LCZ_Filter``), tiled and deflated like the real map; sparse: only the tiles under
    a city are stored (25 Gpx of mostly nodata in about 1.5 MB)."""
    with rasterio.open(summary["coarse_labels"]) as mosaic:
        t, colormap = mosaic.transform, mosaic.colormap(1)
        profile = {"driver": "GTiff", "width": mosaic.width, "height": mosaic.height,
                   "count": 1, "dtype": "uint8", "crs": mosaic.crs, "transform": t,
                   "nodata": 0, "tiled": True, "blockxsize": 512, "blockysize": 512,
                   "compress": "deflate", "sparse_ok": True}
    with rasterio.open(path, "w", **profile) as dst:
        for part_path in summary["coarse_per_city"].values():
            with rasterio.open(part_path) as part:
                col = round((part.transform.c - t.c) / t.a)
                row = round((part.transform.f - t.f) / t.e)
                dst.write(part.read(1), 1, window=Window(col, row, part.width, part.height))
        dst.write_colormap(1, colormap)
        dst.set_band_description(1, "LCZ_Filter")
    assert path.stat().st_size < 16 << 20
    return str(path)


def _zones_in(summary: dict[str, Any], box: tuple[float, ...]) -> set[str]:
    """The zones of the cities whose window lies in the lon/lat box."""
    minlon, minlat, maxlon, maxlat = box
    return {c["zone"] for c in summary["cities"]
            if minlon <= c["bbox_lonlat"][0] and c["bbox_lonlat"][2] <= maxlon
            and minlat <= c["bbox_lonlat"][1] and c["bbox_lonlat"][3] <= maxlat}


def _train(world: dict[str, Any], labels: str, box: tuple[float, ...], out: Path,
           capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code = main(["train", "--source", world["source"], "--labels", labels,
                 f"--bbox={','.join(map(str, box))}", "--out", str(out), "--config",
                 world["config"], "--device", "cpu", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    return dict(json.loads(captured.out))


def _check(world: dict[str, Any], labels: str, box: tuple[float, ...], out: Path,
           capsys: pytest.CaptureFixture[str]) -> None:
    metrics = _train(world, labels, box, out, capsys)
    assert metrics["data"] == "stream"
    assert metrics["block_reads"] > 0  # training read embeddings through the block cache
    index = np.load(out / "sample_index.npz", allow_pickle=False)
    zones = set(index["zones"].tolist())
    expected = _zones_in(world["summary"], box)
    assert zones == expected  # every zone of a city in the box, and no other
    assert len(index["windows"]) == metrics["regions"] == len(index["zones"])
    assert set(index["cities"].tolist()) == {Path(labels).name.split(".")[0]}  # one label set
    # every indexed region carries labels, and the classes come from several zones
    assert (index["class_pixels"][:, 1:].sum(axis=1) > 0).all()
    for i in range(len(index["windows"])):
        assert index[f"labels_{i}"].any()
    saved = json.loads((out / "checkpoint.json").read_text())["metrics"]
    assert saved["block_reads"] == metrics["block_reads"]


@pytest.mark.parametrize("kind", ["tif", "vrt"])
def test_one_label_file_over_many_cities_trains_across_zones(
        world: dict[str, Any], kind: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    expected = _zones_in(world["summary"], BOX)
    assert len(expected) >= 5
    lats = {c["zone"]: c["lat"] for c in world["summary"]["cities"] if c["zone"] in expected}
    assert min(lats.values()) < 0 < max(lats.values())  # north and south
    _check(world, world[kind], BOX, tmp_path / "model", capsys)


def test_a_whole_world_box_trains_on_every_zone(world: dict[str, Any], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A box far wider than a UTM zone keeps every zone it covers (each window is tested in
    lon/lat, never the box projected into one zone, where it degenerates)."""
    assert len(_zones_in(world["summary"], WORLD_BOX)) == 11
    _check(world, world["tif"], WORLD_BOX, tmp_path / "model", capsys)
