# Sourced by the GPU scripts (bench/gpu_check.sh, bench/gpu_study.sh): installs the carried wheels of whatever a
# stock GPU node lacks (hydra-core, omegaconf, antlr4, datasets, ...) into a private folder without internet and
# without touching the node's torch, and puts this checkout on PYTHONPATH (no install needed). Uses $wheels (a folder
# of *.whl, or empty), $py and $repo; exports PYTHONPATH and the offline variables. docs/gpu.md.
if [ -n "$wheels" ]; then
  shopt -s nullglob
  files=("$wheels"/*.whl)
  if [ ${#files[@]} -eq 0 ]; then
    echo "gpu: no *.whl in --wheels $wheels" >&2; exit 2
  fi
  for f in "${files[@]}"; do
    case "$(basename "$f")" in
      torch-*|torchvision-*|torchaudio-*|triton-*|nvidia_*)
        echo "gpu: refusing $(basename "$f"): the node's own torch/CUDA stack is kept; remove it from $wheels" >&2
        exit 2 ;;
    esac
  done
  site="${KAVA_GPU_CHECK_SITE:-${TMPDIR:-/tmp}/kava-gpu-check-site}"
  torch_before="$("$py" -c 'import torch; print(torch.__version__)')"
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${files[@]}"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  torch_after="$("$py" -c 'import torch; print(torch.__version__)')"
  if [ "$torch_before" != "$torch_after" ]; then
    echo "gpu: torch changed from $torch_before to $torch_after after installing $wheels" >&2; exit 2
  fi
  echo "gpu: ${#files[@]} carried wheels in $site; torch $torch_after untouched"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
