"""The Zarr cube sink on local disk passes the sink conformance suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from lczscale.config import CubeConfig, GridConfig
from lczscale.core.grid import utm_zone
from lczscale.io.cube.sink import ZarrCubeSink
from lczscale.io.cube.store import create_cube
from tests.cube_sink_conformance import TILE, CubeSinkConformance, SinkCase


class TestLocalZarrSink(CubeSinkConformance):
    @pytest.fixture
    def case(self, tmp_path: Path) -> SinkCase:
        zone = utm_zone(32)
        url = str(tmp_path / "c.zarr")
        create_cube(url, [zone], [2024], GridConfig(tile_size=TILE), CubeConfig(), {})
        return SinkCase(ZarrCubeSink(url), zone, 2024)
