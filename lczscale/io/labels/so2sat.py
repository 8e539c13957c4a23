"""So2Sat LCZ42 patches as a label source: each patch's class burnt onto its 320 m footprint.

A So2Sat image file (``training.h5``: ``sen1`` (N,32,32,8), ``sen2`` (N,32,32,10), ``label``
(N,17) one-hot) has no coordinates; its companion ``training_geo.h5`` holds them in the same
order: ``tfw`` (N,6) in world-file order [A, D, B, E, C, F] → ``Affine(A, B, C, D, E, F)`` (the
upper-left corner, as the dataset's own ``save_geotiff.py`` uses it), ``epsg`` (N,1) or (N,),
``coord`` (N,6) and ``city`` / ``cityList``. Only ``label`` and the geo arrays are read —
never the image cubes, which run to tens of GB.

The class is ``argmax + 1`` (LCZ 1–10, A–G = 11–17); an all-zero row is nodata. Pixels are
10 m, so a 32×32 patch covers 320 m; a transform whose |A| or |E| is not ≈ 10 m, or that is
rotated, is refused (it would put labels in the wrong place). Footprints are burnt with
pixel-centre inclusion (nearest), and overlapping patches of different classes give 0.
"""

from __future__ import annotations

import functools
from typing import Any, override

import h5py
import numpy as np
import shapely
from pyproj import Transformer
from rasterio.warp import transform_bounds

from lczscale.core.grid import Window, Zone
from lczscale.errors import SourceError
from lczscale.io.labels.encoding import SO2SAT, SO2SAT_SOFT
from lczscale.io.labels.protocol import I32, U8, LabelSource, burn, burn_units
from lczscale.io.stores import filesystem

PIXEL = 10.0  # metres
PIXEL_TOL = 0.05  # relative tolerance on |A|, |E|, as in the dataset's save_geotiff.py
ROTATION_TOL = 1e-6


def geo_path_for(path: str) -> str:
    """``…/training.h5`` → ``…/training_geo.h5`` (and back for a geo file)."""
    stem = path[:-3] if path.endswith(".h5") else path
    return f"{stem}_geo.h5"


@functools.cache
def _transformer(src: str, dst: str) -> Transformer:
    return Transformer.from_crs(src, dst, always_xy=True)


class So2SatLabels(LabelSource):
    """Labels from So2Sat LCZ42 patches: each patch's class burnt onto its 320 m footprint."""
    kind = "so2sat"

    def __init__(
        self, path: str, geo: str | None = None, storage_options: dict[str, Any] | None = None
    ) -> None:
        if path.endswith("_geo.h5") and geo is None:  # the geo file was given: find the images
            path, geo = path[: -len("_geo.h5")] + ".h5", path
        self.path = path
        self.geo_path = geo or geo_path_for(path)
        fs, p = filesystem(path, storage_options)
        self.classes_of, self.encoding, self.patch = self._labels(fs, p)
        gfs, gp = filesystem(self.geo_path, storage_options)
        if not gfs.exists(gp):
            raise SourceError(
                f"So2Sat file {path} has no geolocation file {self.geo_path}: the patches "
                "cannot be placed without it; download the matching *_geo.h5 (same order as "
                "the image file) next to it, or pass geo=PATH"
            )
        self.transforms, self.epsg, self.cities = self._geo(gfs, gp, len(self.classes_of))
        self._groups = self._footprints()
        west, south, east, north = np.inf, np.inf, -np.inf, -np.inf
        for epsg, (_, x0, y0, x1, y1) in self._groups.items():
            b = transform_bounds(epsg, "EPSG:4326", x0.min(), y0.min(), x1.max(), y1.max())
            west, south = min(west, b[0]), min(south, b[1])
            east, north = max(east, b[2]), max(north, b[3])
        self.crs = "EPSG:4326"
        self.bounds = (float(west), float(south), float(east), float(north))

    def _labels(self, fs: Any, p: str) -> tuple[np.ndarray, str, tuple[int, int]]:
        try:
            with fs.open(p, "rb") as fh, h5py.File(fh, "r") as f:
                if "label" not in f:
                    raise SourceError(
                        f"{self.path} is an HDF5 file without a 'label' dataset (keys "
                        f"{sorted(f.keys())}); a So2Sat LCZ42 file has sen1, sen2 and label"
                    )
                onehot = np.asarray(f["label"][()], dtype=np.float64)
                patch = (32, 32)
                for key in ("sen2", "sen1"):
                    if key in f and len(f[key].shape) == 4:
                        patch = (int(f[key].shape[1]), int(f[key].shape[2]))
                        break
        except OSError as exc:
            raise SourceError(f"cannot read So2Sat file {self.path}: {exc}") from exc
        if onehot.ndim != 2 or onehot.shape[1] != 17:
            raise SourceError(
                f"{self.path}: 'label' has shape {onehot.shape}; So2Sat LCZ42 labels are "
                "(N, 17) one-hot vectors in the order LCZ 1–10, A–G"
            )
        if not np.isfinite(onehot).all() or (onehot < 0).any():
            raise SourceError(f"{self.path}: 'label' holds negative or non-finite values")
        total = onehot.sum(axis=1)
        classes = np.where(total > 0, onehot.argmax(axis=1) + 1, 0).astype(np.uint8)
        hot = ((onehot == 0) | (onehot == 1)).all(axis=1) & (total <= 1)
        return classes, (SO2SAT if hot.all() else SO2SAT_SOFT), patch

    def _geo(
        self, fs: Any, p: str, n: int
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        try:
            with fs.open(p, "rb") as fh, h5py.File(fh, "r") as f:
                missing = [k for k in ("tfw", "epsg") if k not in f]
                if missing:
                    raise SourceError(
                        f"{self.geo_path} lacks {missing} (keys {sorted(f.keys())}); a So2Sat "
                        "geolocation file has coord, epsg, tfw and city"
                    )
                tfw = np.asarray(f["tfw"][()], dtype=np.float64)
                epsg = np.asarray(f["epsg"][()]).reshape(-1)
                coord = np.asarray(f["coord"][()], dtype=np.float64) if "coord" in f else None
                ckey = "city" if "city" in f else "cityList" if "cityList" in f else None
                cities = [] if ckey is None else sorted(
                    {(c.decode() if isinstance(c, bytes) else str(c)).strip().lower()
                     for c in np.asarray(f[ckey][()]).reshape(-1)}
                )
        except OSError as exc:
            raise SourceError(f"cannot read So2Sat geolocation {self.geo_path}: {exc}") from exc
        if tfw.shape != (n, 6) or epsg.shape != (n,):
            raise SourceError(
                f"{self.geo_path} does not match {self.path}: tfw {tfw.shape}, epsg "
                f"{epsg.shape} for {n} patches (expected ({n}, 6) and ({n},) or ({n}, 1))"
            )
        a, d, b, e = tfw[:, 0], tfw[:, 1], tfw[:, 2], tfw[:, 3]
        bad = ~(
            (np.abs(np.abs(a) - PIXEL) <= PIXEL * PIXEL_TOL)
            & (np.abs(np.abs(e) - PIXEL) <= PIXEL * PIXEL_TOL)
            & (np.abs(b) <= ROTATION_TOL) & (np.abs(d) <= ROTATION_TOL)
        )
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise SourceError(
                f"{self.geo_path}: {int(bad.sum())} patch transform(s) are not 10 m north-up "
                f"pixels, first patch {i}: tfw [A, D, B, E, C, F] = {tfw[i].tolist()}; So2Sat "
                "patches are 32×32 Sentinel pixels of 10 m — check the file is So2Sat LCZ42"
            )
        codes = epsg.astype(np.int64)
        if coord is not None and coord.shape[0] == n and coord.shape[1] >= 2:
            self._check_coord(tfw, coord)
        return tfw, codes, cities

    def _check_coord(self, tfw: np.ndarray, coord: np.ndarray) -> None:
        """``coord``'s UTM X, Y must lie on (or within a patch of) the tfw footprint: catches a
        geo file from another split or city order."""
        h, w = self.patch
        x0, x1 = tfw[:, 4], tfw[:, 4] + w * tfw[:, 0]
        y0, y1 = tfw[:, 5], tfw[:, 5] + h * tfw[:, 3]
        slack = max(h, w) * PIXEL
        far = (
            (coord[:, 0] < np.minimum(x0, x1) - slack) | (coord[:, 0] > np.maximum(x0, x1) + slack)
            | (coord[:, 1] < np.minimum(y0, y1) - slack)
            | (coord[:, 1] > np.maximum(y0, y1) + slack)
        )
        if far.any():
            i = int(np.flatnonzero(far)[0])
            raise SourceError(
                f"{self.geo_path}: coord (UTM X, Y) of {int(far.sum())} patch(es) is far from "
                f"their tfw footprint, first patch {i}: coord {coord[i, :2].tolist()}, tfw "
                f"{tfw[i].tolist()}; the geo file does not belong to {self.path}"
            )

    def _footprints(self) -> dict[str, tuple[np.ndarray, ...]]:
        """Per EPSG: (patch indices, x0, y0, x1, y1) of labelled patches (min/max corners)."""
        h, w = self.patch
        t = self.transforms
        xa, xb = t[:, 4], t[:, 4] + w * t[:, 0]
        ya, yb = t[:, 5], t[:, 5] + h * t[:, 3]
        x0, x1 = np.minimum(xa, xb), np.maximum(xa, xb)
        y0, y1 = np.minimum(ya, yb), np.maximum(ya, yb)
        groups: dict[str, tuple[np.ndarray, ...]] = {}
        for code in np.unique(self.epsg):
            idx = np.flatnonzero((self.epsg == code) & (self.classes_of > 0))
            if idx.size:
                groups[f"EPSG:{int(code)}"] = (idx, x0[idx], y0[idx], x1[idx], y1[idx])
        return groups

    @override
    def read(self, zone: Zone, window: Window) -> U8:
        return burn(((p, c) for p, c, _ in self._patches_over(zone, window)), zone, window)

    @override
    def units(self, zone: Zone, window: Window) -> I32:
        """The patch (its 1-based position in the file) of each pixel."""
        return burn_units(((p, i + 1) for p, _, i in self._patches_over(zone, window)), zone,
                          window)

    def _patches_over(self, zone: Zone, window: Window) -> list[tuple[shapely.Geometry, int, int]]:
        """(footprint in the zone CRS, class, patch index) of the patches over a window."""
        gbox = zone.window_geobox(window)
        shapes: list[tuple[shapely.Geometry, int, int]] = []
        for crs, (idx, x0, y0, x1, y1) in self._groups.items():
            left, bottom, right, top = transform_bounds(zone.crs, crs, *gbox.extent.boundingbox)
            if not np.isfinite([left, bottom, right, top]).all():
                continue
            hit = (x1 > left) & (x0 < right) & (y1 > bottom) & (y0 < top)
            if not hit.any():
                continue
            xs = np.stack([x0[hit], x1[hit], x1[hit], x0[hit]], axis=1)
            ys = np.stack([y0[hit], y0[hit], y1[hit], y1[hit]], axis=1)
            if crs != zone.crs:
                xs, ys = _transformer(crs, zone.crs).transform(xs, ys)
            rings = np.stack([np.asarray(xs), np.asarray(ys)], axis=-1)
            polys = shapely.polygons(rings)
            shapes.extend(zip(polys, self.classes_of[idx[hit]].tolist(), idx[hit].tolist(),
                              strict=True))
        return shapes

    @override
    def details(self) -> dict[str, Any]:
        counts = np.bincount(self.classes_of, minlength=18)
        return {
            "geo_path": self.geo_path, "patches": int(self.classes_of.size),
            "unlabelled_patches": int(counts[0]), "patch_px": list(self.patch),
            "epsg": sorted(int(v) for v in np.unique(self.epsg)), "cities": self.cities,
            "classes": [int(c) for c in np.flatnonzero(counts[1:]) + 1],
        }
