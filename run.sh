#!/usr/bin/env bash
# Set up lczscale on a machine with only Python and pip, then run the demo or the tests.
#   bash run.sh demo [DIR]   synthetic world → train → map → cube → pictures + report
#   bash run.sh test         the test suite (the command CI runs)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

setup() {
  # torch first: the pinned CPU build, so nothing pulls several GB of CUDA wheels.
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
    "$PY" -m pytest -q -p no:cacheprovider tests
    ;;
  *)
    echo "usage: bash run.sh demo [DIR] | bash run.sh test" >&2
    exit 64
    ;;
esac
