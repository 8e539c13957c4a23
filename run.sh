#!/usr/bin/env bash
# Set up lczscale on a machine with only Python and pip, then run the demo or the tests.
#   bash run.sh demo [DIR]   synthetic world → train → map → cube → pictures + report
#   bash run.sh test         the test suite (the command CI runs)
# lczscale needs Python >= 3.12 (icechunk 2, which opens the published TESSERA v1.1 store, and
# rasterio >= 1.5, whose GDAL reads Zarr v3). Set PYTHON=/path/to/python3.12 to choose one;
# otherwise the first Python >= 3.12 found on PATH or under pyenv is used. Everything is
# installed into .venv/ beside this file (created once, reused after).
set -euo pipefail
cd "$(dirname "$0")"

is_new_enough() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; }

find_python() {
  local c
  for c in "${PYTHON:-}" python3.12 python3.13 python3.14 python3 \
      "$(pyenv root 2>/dev/null)"/versions/3.1[2-9]*/bin/python \
      "$HOME"/.pyenv/versions/3.1[2-9]*/bin/python; do
    [[ -n "$c" ]] && is_new_enough "$c" && { command -v "$c" || echo "$c"; return 0; }
  done
  echo "run.sh: lczscale needs Python >= 3.12 and none was found (tried PYTHON, python3.12," \
    "python3.13, python3 and pyenv); install one and/or set PYTHON=/path/to/python3.12" >&2
  exit 2
}

setup() {
  if [[ ! -x .venv/bin/python ]] || ! is_new_enough .venv/bin/python; then
    rm -rf .venv
    "$(find_python)" -m venv .venv
  fi
  PY=.venv/bin/python
  export PATH="$PWD/.venv/bin:$PATH"  # the venv's commands (lczscale, dask) for the tests
  "$PY" -m pip install --quiet --upgrade pip
  # PyPI's torch for Python 3.12 is a CUDA build (about 3 GB with its libraries); it runs on the
  # CPU as well. Pinned so that CPU results (the tests hold the cube bit for bit) do not move.
  if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    "$PY" -m pip install --quiet "torch==2.13.0"
  fi
  "$PY" -m pip install --quiet -e ".[dev]"
}

case "${1:-}" in
  demo)
    setup
    "$PY" -m lczscale.cli demo --dir "${2:-lczscale-demo}"
    ;;
  test)
    setup
    "$PY" -m ruff check lczscale tests benchmarks  # the layout's rules are part of the tests
    "$PY" -m mypy lczscale
    # Two pytest-xdist workers (CI has two cores; much of the suite waits on processes, servers
    # and SLURM), each taking whole test files, the longest first (tests/conftest.py), so that
    # a file's fixtures are built once; the session's shared world is built once in all.
    "$PY" -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --no-loadscope-reorder tests
    ;;
  *)
    echo "usage: bash run.sh demo [DIR] | bash run.sh test" >&2
    exit 64
    ;;
esac
