"""Embedding sources: one narrow protocol, one module per on-disk layout, detected from content.

``open_source(url)`` recognises the layout from the store's own marker files and returns an
:class:`EmbeddingSource` that reads int8 codes of a zone window with their scales and a validity
mask. To add a layout: a class with ``detect``/``open`` and the protocol's methods, listed in
``registry.LAYOUTS``, and passing ``tests/conformance.py``.
"""

from lczscale.lazy_exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "lczscale.io.sources.protocol": [
            "EmbeddingSource",
            "EmbeddingWindow",
            "dequantised",
            "identity",
        ],
        "lczscale.io.sources.registry": ["open_source", "detect_layout", "LAYOUTS"],
    },
)
