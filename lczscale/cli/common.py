"""What several ``lczscale`` commands share: JSON printing, the wording of settings errors,
the hint for a wrong embedding source and the checks of the AOI and ``--source-options``."""

from __future__ import annotations

import json
from typing import Any

from lczscale.errors import LczscaleError

SOURCE_FIX = ("give the embedding store (a Zarr store or Icechunk repository: a directory) or "
              "the folder of tiles or COGs, not a file in it")


def print_json(obj: Any) -> None:
    """Print ``obj`` as indented JSON on stdout (paths, dates and the like as text)."""
    print(json.dumps(obj, indent=2, default=str))


def why(exc: Exception) -> str:
    """A settings error (pydantic or plain) as one line."""
    from pydantic import ValidationError

    from lczscale.config.files import validation_line

    return validation_line(exc) if isinstance(exc, ValidationError) else " ".join(
        str(exc).split())


def check_aoi_file(geojson: str | None) -> None:
    """--geojson names a file (inline GeoJSON text, starting with '{', is read as such)."""
    from lczscale.io.out_path import check_input

    if geojson and not geojson.lstrip().startswith("{"):
        check_input(geojson, "--geojson", "file", "give a GeoJSON file with the AOI polygon")


def source_options(text: str | None) -> dict[str, Any]:
    """``--source-options`` (YAML or JSON, e.g. ``{anon: true}``) as a dict."""
    import yaml

    try:
        options = yaml.safe_load(text) if text else {}
    except yaml.YAMLError as exc:
        raise LczscaleError(f"--source-options is not YAML/JSON ({' '.join(str(exc).split())});"
                            " e.g. '{anon: true}'") from None
    if not isinstance(options, dict):
        raise LczscaleError(f"--source-options must be a mapping such as '{{anon: true}}', got "
                            f"{text!r}")
    return options
