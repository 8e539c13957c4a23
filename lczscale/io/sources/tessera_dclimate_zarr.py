"""The plain Zarr v3 copy of the dClimate TESSERA v1.1 store (Source Cooperative).

``s3://tessera/tessera/zarr/v1.1-dclimate`` (endpoint ``https://data.source.coop``): groups
``utm01`` … ``utm60`` in EPSG:326NN spanning both hemispheres (southern northings negative),
coordinates ``x``/``y``, ``embeddings`` (time, band, y, x) — geotessera's own Zarr layout, which
is why this reader extends :class:`TesseraZarrSource` — but with the dClimate build's meaning
(:mod:`lczscale.io.sources.dclimate_release`): a NaN scale is a pixel without an embedding, never
water;
a year is read only where the source group (``NNN``/``NNS``, kept under
``geotessera:source_groups``) lists it in ``years_complete``; ``s2_obs_count`` is there for
``min_s2_obs``.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
import zarr

from lczscale.core.grid import Window, Zone
from lczscale.core.tiling import Availability
from lczscale.errors import SourceError
from lczscale.io.sources import dclimate_release as dc
from lczscale.io.sources.protocol import EmbeddingWindow, identity
from lczscale.io.sources.tessera_zarr import TesseraZarrSource, nan_scale_meaning
from lczscale.io.stores import root_attributes
from lczscale.io.zarr_calls import ZarrArray


def is_dclimate_tessera(attrs: dict[str, Any]) -> bool:
    """Root attributes of a dClimate TESSERA build: per-pixel scales, NaN = not embedded."""
    quant = attrs.get("geoemb:quantization")
    return (isinstance(quant, dict) and quant.get("method") == "per_pixel_scale"
            and "geotessera.org/model" in str(attrs.get("geoemb:model", ""))
            and nan_scale_meaning(attrs) == dc.SCALE_NODATA_MEANING)


class TesseraDclimateZarrSource(TesseraZarrSource):
    """Reads the plain copy; picklable (URL, options and ``min_s2_obs`` only)."""

    layout = "tessera-dclimate-zarr"
    nan_is_water = False

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None,
                 min_s2_obs: int | None = None) -> None:
        super().__init__(url, storage_options)
        self.min_s2_obs = min_s2_obs

    def __getstate__(self) -> dict[str, Any]:
        return super().__getstate__() | {"min_s2_obs": self.min_s2_obs}

    @classmethod
    def detect(cls, url: str, storage_options: dict[str, Any] | None = None) -> str | None:
        """What a plain-Zarr copy of the dClimate v1.1 build (``utmNN`` groups) is, or None."""
        attrs = root_attributes(url, storage_options)
        if not is_dclimate_tessera(attrs) or attrs.get("geoemb:spatial_layout") != "utm_zones":
            return None
        return (f"dClimate TESSERA store, plain Zarr copy ({attrs.get('geoemb:model')}, "
                f"checkpoint {attrs.get('checkpoint_id')}, utmNN groups, NaN scale = not "
                "embedded)")

    @classmethod
    def open(cls, url: str, storage_options: dict[str, Any] | None = None
             ) -> TesseraDclimateZarrSource:
        """The copy at ``url``, validated now; refused unless it is a dClimate TESSERA build."""
        source = cls(url, storage_options)
        if not is_dclimate_tessera(dict(source.root.attrs)):
            raise SourceError(
                f"{url} is not a dClimate TESSERA v1.1 store: its root does not declare "
                "per-pixel scales with NaN = not embedded (geoemb:quantization.scale.nodata "
                "'NaN', optical_min_obs); use --source-kind auto"
            )
        _ = source._zone_info
        _ = source._complete
        return source

    @property
    def dataset(self) -> str:
        """``tessera/<version>/…`` from the build's own attributes."""
        return dc.dataset_of(dict(self.root.attrs), self.url)

    @cached_property
    def _complete(self) -> dict[str, dict[str, list[int]]]:
        """Per utmNN zone: hemisphere ('N'/'S') → that source group's complete years."""
        out: dict[str, dict[str, list[int]]] = {}
        for name, g in self._groups.items():
            groups = g.attrs.get("geotessera:source_groups")
            where = f"{self.url}/{name}"
            if isinstance(groups, dict) and groups:
                out[name] = {str(k)[-1].upper(): dc.years_complete(v, f"{where} ({k})")
                             for k, v in groups.items() if isinstance(v, dict)}
            else:  # a copy that keeps it at the group's top level
                years = dc.years_complete(dict(g.attrs), where)
                out[name] = {"N": years, "S": years}
        return out

    @property
    def years(self) -> list[int]:
        """The years complete in at least one source group (``years_complete``)."""
        return sorted({y for h in self._complete.values() for ys in h.values() for y in ys})

    def _check_years(self, zone: Zone, year: int, window: Window | None) -> None:
        """Every hemisphere the window touches must list ``year`` as complete."""
        complete = self._complete.get(zone.name, {})
        equator = round((0.0 - zone.affine.f) / zone.affine.e)  # first row south of it
        for hemisphere, years in complete.items():
            if window is not None:
                north = window.row < equator
                south = window.row_stop > equator
                if (hemisphere == "N" and not north) or (hemisphere == "S" and not south):
                    continue
            dc.check_year(f"{zone.name[3:]}{hemisphere}", year, years, self.url)

    def availability(self, zone: Zone, year: int, within: Window | None = None) -> Availability:
        """As geotessera's store, once ``year`` is known complete where ``within`` lies."""
        if zone.name in self._groups:
            self._check_years(zone, year, within)
        return super().availability(zone, year, within)

    def read(self, zone: Zone, window: Window, year: int) -> EmbeddingWindow:
        """As for geotessera's store, with NaN scales as no data (never water) and, with
        ``min_s2_obs``, pixels seen by fewer Sentinel-2 observations made invalid."""
        self._check_years(zone, year, window)
        data = super().read(zone, window, year)
        if self.min_s2_obs is not None:
            thin = dc.thin_pixels(self._s2_obs(zone, window, year), self.min_s2_obs)
            if thin is not None and thin.any():
                data.valid &= ~thin
                data.codes[:, thin] = 0
                if data.scales is not None:
                    data.scales[thin] = 0.0
        return data

    def _s2_obs(self, zone: Zone, window: Window, year: int) -> np.ndarray:
        """``s2_obs_count`` under the window (0 outside the store)."""
        (r_off, c_off), t, emb, _ = self._locate(zone, year)
        try:
            arr = self._groups[zone.name]["s2_obs_count"]
        except KeyError:
            raise SourceError(
                f"{self.url}/{zone.name} has no 's2_obs_count' array, which min_s2_obs needs; "
                "leave min_s2_obs unset for this store"
            ) from None
        assert isinstance(arr, zarr.Array)
        out = np.zeros((window.height, window.width), dtype=np.uint16)
        inner = window.intersection(Window(r_off, c_off, emb.shape[2], emb.shape[3]))
        if inner is not None:
            src = (slice(inner.row - r_off, inner.row_stop - r_off),
                   slice(inner.col - c_off, inner.col_stop - c_off))
            out[inner.relative_to(window)] = self._fetch(arr, (t, *src), year, inner)
        return out

    def _digest_arrays(self, zone: Zone) -> list[ZarrArray]:
        arrays = super()._digest_arrays(zone)
        s2 = self._groups[zone.name].get("s2_obs_count") if self.min_s2_obs is not None else None
        return arrays + ([s2] if isinstance(s2, zarr.Array) else [])

    def describe(self) -> dict[str, Any]:
        """Provenance: the build's checkpoint, its quality rule and ours (``min_s2_obs``)."""
        attrs = self.root.attrs
        return {**identity(self), "checkpoint_id": attrs.get("checkpoint_id"),
                "optical_min_obs": attrs.get("optical_min_obs"),
                "scale_nan": dc.SCALE_NODATA_MEANING, "min_s2_obs": self.min_s2_obs,
                "build_version": attrs.get("geoemb:build_version")}

