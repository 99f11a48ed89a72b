#!/usr/bin/env bash
# The depth-bound task study on one GPU (docs/gpu.md, docs/study.md): two backbones, 10 paired seeds of KAVA dense,
# no-CoT, pause tokens and the no-distillation student (2 of KAVA last-step and PCCoT) on a 4-layer, hidden-256
# backbone, 16 runs at a time in parallel on the one GPU. Writes docs/study_<task>_gpu.md and its figures.
#
#   bench/gpu_study.sh [--wheels DIR] [--task modsum] [--plan gpu|gpu_tiny] [--work DIR] [--out DIR]
#
# --plan gpu_tiny runs the same pipeline on the CPU at a tiny size (tests/test_study.py).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
wheels=""
task="modsum"
plan="gpu"
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) wheels="$2"; shift 2 ;;
    --task) task="$2"; shift 2 ;;
    --plan) plan="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
py="${PYTHON:-python3}"
. "$repo/bench/gpu_env.sh"
start=$(date +%s)
"$py" "$repo/bench/study.py" --task "$task" --plan "$plan" ${args[@]+"${args[@]}"}
echo "gpu_study: $(( $(date +%s) - start )) s"
