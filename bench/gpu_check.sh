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
if [ -n "$wheels" ]; then
  shopt -s nullglob
  files=("$wheels"/*.whl)
  if [ ${#files[@]} -eq 0 ]; then
    echo "gpu_check: no *.whl in --wheels $wheels" >&2; exit 2
  fi
  for f in "${files[@]}"; do
    case "$(basename "$f")" in
      torch-*|torchvision-*|torchaudio-*|triton-*|nvidia_*)
        echo "gpu_check: refusing $(basename "$f"): the node's own torch/CUDA stack is kept; remove it from $wheels" >&2
        exit 2 ;;
    esac
  done
  site="${KAVA_GPU_CHECK_SITE:-${TMPDIR:-/tmp}/kava-gpu-check-site}"
  torch_before="$("$py" -c 'import torch; print(torch.__version__)')"
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${files[@]}"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  torch_after="$("$py" -c 'import torch; print(torch.__version__)')"
  if [ "$torch_before" != "$torch_after" ]; then
    echo "gpu_check: torch changed from $torch_before to $torch_after after installing $wheels" >&2; exit 2
  fi
  echo "gpu_check: ${#files[@]} carried wheels in $site; torch $torch_after untouched"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
exec "$py" "$repo/bench/gpu_check.py" ${args[@]+"${args[@]}"}
