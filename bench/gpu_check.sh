#!/usr/bin/env bash
# The prepared GPU check for a stock GPU node (docs/gpu.md). Installs the carried wheels of whatever the node
# lacks (hydra-core, omegaconf, antlr4, datasets, ...) into a private folder without internet and without touching
# the node's torch, puts this checkout on PYTHONPATH (no install needed), and runs bench/gpu_check.py.
#
#   bench/gpu_check.sh [--wheels DIR] [--out DIR] [--dry-run] [--peak-tflops X] [--stages a,b]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
wheels=""
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) wheels="$2"; shift 2 ;;
    --wheels=*) wheels="${1#*=}"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
py="${PYTHON:-python3}"
. "$repo/bench/gpu_env.sh"
exec "$py" "$repo/bench/gpu_check.py" ${args[@]+"${args[@]}"}
