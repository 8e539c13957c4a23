"""An independent reader for integration tests: GDAL ≥ 3.12 (via rasterio ≥ 1.5) in its own process.

The project's environment (Python 3.12, rasterio ≥ 1.5) has such a GDAL, so ``gdal_read_zarr.py``
(which never imports lczscale) runs with this interpreter in a subprocess. Where it does not
(an older environment), this module builds, once and cached, a Python 3.12 virtualenv holding
``rasterio>=1.5`` and ``numpy`` and runs the script there.

Not a test module (pytest collects only ``test_*.py``); load it from a test with
:func:`importlib.util.spec_from_file_location` or with ``tests/`` on ``sys.path``.

Environment:

* ``LCZSCALE_GDAL_VENV``: where the venv lives (default ``~/.cache/lczscale/gdal-py312``).
* ``LCZSCALE_PYTHON312``: a Python 3.12 interpreter to build it with (default: ``python3.12`` on
  ``PATH``, else a pyenv-installed 3.12).
"""

from __future__ import annotations

import fcntl
import functools
import glob
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

READER_SCRIPT = Path(__file__).with_name("gdal_read_zarr.py")
MIN_GDAL = (3, 12)
REQUIREMENTS = ("rasterio>=1.5", "numpy")
DEFAULT_VENV = Path("~/.cache/lczscale/gdal-py312")
# The side venv brings its own GDAL/PROJ data; the parent's settings would point at other versions.
_STRIP_ENV = ("GDAL_DATA", "PROJ_LIB", "PROJ_DATA", "GDAL_DRIVER_PATH", "PYTHONPATH", "PYTHONHOME")


class GdalReadError(RuntimeError):
    """GDAL (in the side venv) refused to open or read a dataset."""

    def __init__(self, message: str, gdal_version: str | None, name: str) -> None:
        super().__init__(f"GDAL {gdal_version} could not read {name}: {message}")
        self.gdal_version = gdal_version
        self.name = name
        self.reason = message


def venv_dir() -> Path:
    return Path(os.environ.get("LCZSCALE_GDAL_VENV") or DEFAULT_VENV).expanduser()


def _child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _STRIP_ENV}


def _run(cmd: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=timeout, env=_child_env(), check=False
    )


def find_python312() -> Path:
    """A working Python 3.12 interpreter (its real path, not a shim); RuntimeError if none."""
    candidates: list[str] = []
    if os.environ.get("LCZSCALE_PYTHON312"):
        candidates.append(os.environ["LCZSCALE_PYTHON312"])
    if which := shutil.which("python3.12"):
        candidates.append(which)
    # A pyenv shim fails unless 3.12 is the active version; use the installed one directly.
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates += sorted(
        glob.glob(os.path.join(pyenv_root, "versions", "3.12*", "bin", "python3.12")), reverse=True
    )
    probe = "import sys; print(sys.executable); print('%d.%d' % sys.version_info[:2])"
    tried = []
    for cand in dict.fromkeys(candidates):
        try:
            proc = _run([cand, "-c", probe], timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            tried.append(f"{cand} ({exc})")
            continue
        lines = proc.stdout.split()
        if proc.returncode == 0 and len(lines) == 2 and lines[1] == "3.12":
            return Path(lines[0])
        tried.append(f"{cand} (rc={proc.returncode}: {(proc.stderr or proc.stdout).strip()[:200]})")
    raise RuntimeError(
        "python3.12 is required to build the GDAL>=3.12 reader venv (rasterio>=1.5 wheels need "
        "Python 3.12) but no working interpreter was found; install python3.12 or set "
        f"LCZSCALE_PYTHON312. Tried: {tried or ['python3.12 not on PATH']}"
    )


_CHECK = (
    "import sys, rasterio\n"
    "v = tuple(int(p) for p in rasterio.__gdal_version__.split('.')[:2])\n"
    "print(rasterio.__gdal_version__)\n"
    f"sys.exit(0 if v >= {MIN_GDAL!r} else 3)\n"
)


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _venv_works(venv: Path) -> bool:
    py = _venv_python(venv)
    if not py.exists():
        return False
    try:
        return _run([str(py), "-I", "-c", _CHECK], timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@functools.cache
@functools.cache
def _python_has_gdal(python: Path) -> bool:
    """Whether ``python`` has rasterio with GDAL >= MIN_GDAL (a separate process: the reader
    must not share this one's GDAL state)."""
    return _run([str(python), "-I", "-c", _CHECK], timeout=120).returncode == 0


def gdal_python() -> Path:
    """Python of the (cached) side venv with rasterio ≥ 1.5 / GDAL ≥ 3.12, built on first use.

    A file lock next to the venv keeps parallel test runs from building it at the same time.
    """
    here = Path(sys.executable)
    if _python_has_gdal(here):  # the project's own environment (Python 3.12, rasterio >= 1.5)
        return here
    venv = venv_dir()
    if _venv_works(venv):
        return _venv_python(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    lock_path = venv.with_name(venv.name + ".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _venv_works(venv):  # another process built it while we waited
                return _venv_python(venv)
            python312 = find_python312()
            if venv.exists():
                shutil.rmtree(venv)
            steps = [
                [str(python312), "-m", "venv", str(venv)],
                [
                    str(_venv_python(venv)),
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    *REQUIREMENTS,
                ],
            ]
            for cmd in steps:
                proc = _run(cmd, timeout=1200)
                if proc.returncode != 0:
                    shutil.rmtree(venv, ignore_errors=True)
                    raise RuntimeError(
                        f"building the GDAL reader venv failed: {' '.join(cmd)} exited "
                        f"{proc.returncode}\n{(proc.stdout + proc.stderr)[-4000:]}"
                    )
            check = _run([str(_venv_python(venv)), "-I", "-c", _CHECK], timeout=120)
            if check.returncode != 0:
                raise RuntimeError(
                    f"the venv at {venv} has rasterio with GDAL {check.stdout.strip() or '?'}; "
                    f"need GDAL >= {'.'.join(map(str, MIN_GDAL))} to read Zarr v3\n{check.stderr}"
                )
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return _venv_python(venv)


def zarr_dataset_name(
    cube_path: str | os.PathLike[str], group: str, variable: str, time_index: int | None
) -> str:
    """GDAL's name for one array of a Zarr store: ``ZARR:"<path>":/<group>/<var>[:<t>]``.

    For a (time, y, x) array, the trailing ``:<t>`` selects the 2-D slice at index ``t`` of the
    first dimension (one band); without it GDAL exposes every time step as a band.
    """
    name = f'ZARR:"{os.fspath(cube_path)}":/{group}/{variable}'
    return name if time_index is None else f"{name}:{time_index}"


Windows = tuple[int, int, int, int] | Sequence[tuple[int, int, int, int]] | None


def _is_single(window: Windows) -> bool:
    return window is not None and len(window) == 4 and not isinstance(window[0], Sequence)


def _window_list(window: Windows) -> list[tuple[int, ...]]:
    if window is None:
        return []
    boxes: Sequence[Any] = [window] if _is_single(window) else window
    return [tuple(int(v) for v in box) for box in boxes]


def read_dataset(name: str, window: Windows = None, band: int = 1) -> dict[str, Any]:
    """Run the reader script on a GDAL dataset name; GdalReadError if GDAL refuses it.

    ``window`` is one (row0, col0, height, width) or a list of them; all are read in one GDAL
    session. One window: its pixels are ``out["values"]``; a list: ``out["values_list"]``.
    """
    windows = _window_list(window)
    cmd = [str(gdal_python()), "-I", str(READER_SCRIPT), name, "--band", str(band)]
    for w in windows:
        cmd += ["--window", *(str(v) for v in w)]
    proc = _run(cmd, timeout=600)
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(
            f"GDAL reader script failed (rc={proc.returncode}) on {name}:\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        ) from None
    if proc.returncode != 0 or "error" in out:
        raise GdalReadError(out.get("error", proc.stderr[-2000:]), out.get("gdal_version"), name)
    if window is not None:
        reads = out["reads"]
        out["values_dtype"] = reads[0]["dtype"] if reads else None
        if _is_single(window):
            out["values"] = reads[0]["values"]
        else:
            out["values_list"] = [r["values"] for r in reads]
    return out


def read_with_gdal(
    cube_path: str | os.PathLike[str],
    group: str,
    variable: str,
    time_index: int | None,
    window: Windows,
    *,
    band: int = 1,
) -> dict[str, Any]:
    """What GDAL sees for ``/<group>/<variable>`` (time slice ``time_index``) of a Zarr cube.

    ``window`` is (row0, col0, height, width) in pixels; its values come back as a nested list
    under ``"values"`` (a list of windows: ``"values_list"``, read in one GDAL session). Other
    keys: ``gdal_version``, ``crs_wkt``, ``epsg``, ``transform`` (affine a, b, c, d, e, f),
    ``width``, ``height``, ``count``, ``nodata``, ``dtype``, ``values_dtype``, ``name``.
    With ``time_index=None`` GDAL exposes all time steps as bands; pick one with ``band``.
    """
    return read_dataset(zarr_dataset_name(cube_path, group, variable, time_index), window, band)


def gdal_version() -> tuple[int, ...]:
    """GDAL version of the side venv, e.g. (3, 12, 2)."""
    proc = _run(
        [str(gdal_python()), "-I", "-c", "import rasterio; print(rasterio.__gdal_version__)"],
        timeout=120,
    )
    return tuple(int(p) for p in proc.stdout.strip().split(".")[:3])


if __name__ == "__main__":  # by hand: python tests/gdal_reader.py 'ZARR:"x.zarr":/utm32/lcz:0'
    print(json.dumps(read_dataset(sys.argv[1]) if len(sys.argv) > 1 else str(gdal_python())))
