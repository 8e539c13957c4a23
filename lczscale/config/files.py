"""Read a settings file: YAML that must be a mapping, and pydantic errors as one line.

Every settings file lczscale reads (a map or training config, a cluster YAML) goes through
``read_yaml_mapping`` so that a missing, unreadable or malformed file fails with one line that
names the file and what to fix, and through ``validation_line`` so that invalid settings are
reported without echoing their values (a URL with a secret in it must not reach a log).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from lczscale.errors import ConfigError


def read_yaml_mapping(path: str | os.PathLike[str], what: str = "config") -> dict[str, Any]:
    """The mapping in YAML file ``path`` (empty file: ``{}``); ConfigError, one line, when the
    file is missing, is a directory, is not YAML, or holds something other than a mapping."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{what} {p} does not exist; check the path") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {p} is a directory; give a YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {p}: {' '.join(str(exc).split())}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{what} {p} is not valid YAML ({problem}{where}); fix the syntax "
                          "there") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {p} must be a YAML mapping of settings (key: value lines), "
                          f"but holds a {type(data).__name__}")
    return data

def validation_line(exc: Any) -> str:
    """A pydantic ValidationError as one line: ``field.path: message; …`` (inputs left out, as
    the models hide them: a URL with a secret in it must not reach a log)."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = ".".join(str(v) for v in err.get("loc", ())) or "(settings)"
        msg = " ".join(str(err.get("msg", "")).split()).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts) or " ".join(str(exc).split())
