"""The code's real version: the package version plus a content hash of the package.

The provenance of every tile names it, so a change to the code that makes the bytes (an edited
module, a checkout of another commit, a local patch) restales the cube even where the package
version string was not bumped.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

__version__ = "0.1.0"
SUFFIXES = (".py", ".html", ".js", ".css")


@functools.cache
def code_version() -> str:
    """``<version>+<12 hex of sha256 over the package's source files>``."""
    root = Path(__file__).parent
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in SUFFIXES and p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(b"\0")
        h.update(path.read_bytes())
    return f"{__version__}+{h.hexdigest()[:12]}"
