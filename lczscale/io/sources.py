"""Open an embedding source from a URL, recognising its format from its own metadata."""

from __future__ import annotations

from typing import Any

from lczscale.errors import SourceError
from lczscale.io.source import EmbeddingSource
from lczscale.io.stores import exists
from lczscale.io.tessera_zarr import TesseraZarrSource

KINDS = ("tessera",)


def open_source(
    url: str, kind: str = "auto", storage_options: dict[str, Any] | None = None
) -> EmbeddingSource:
    """An embedding source for ``url``; ``kind='auto'`` reads the store's own attributes."""
    if not exists(url, storage_options):
        raise SourceError(f"embedding source {url} does not exist; check the path or URL")
    if kind in ("auto", "tessera"):
        source = TesseraZarrSource(url, storage_options)
        _ = source.root  # validates the convention now, with a clear error
        return source
    raise SourceError(f"unknown source kind {kind!r}; known kinds: {', '.join(KINDS)}")
