#!/usr/bin/env bash
# Stop the cluster start-local-slurm.sh started in DIR: cancel its jobs, stop its daemons.
set -euo pipefail
[[ $# -eq 1 ]] || { echo "usage: $0 DIR" >&2; exit 64; }
exec bash "$(dirname "$0")/start-local-slurm.sh" stop "$1"
