#!/usr/bin/env bash
# The device check, as one script: the three GPU benchmarks with per-script time limits (0 skips
# one), logs in $OUT. Run from a checkout whose factory/, benchmarks/, conf/ are under .gpu/ and
# wheels under .whl/:
#   bash .gpu/benchmarks/gpu_run.sh [synth_seconds score_seconds pipeline_seconds]
# SYNTH_ARGS / SCORE_ARGS / PIPE_ARGS replace each script's arguments (defaults below: what is
# not yet measured, see benchmarks/RESULTS.md).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/.gpu PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false FACTORY_CACHE=/tmp/factory-cache
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
cd .gpu
nvidia-smi -L | tee "$OUT/device.log"
python3 -c "import torch, diffusers, transformers, open_clip; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'open_clip', open_clip.__version__)" 2>&1 | tee -a "$OUT/device.log"
NOISE="should be kept in float32\|warn_once\|lru_cache\|This call originates\|is_torch_version\|^\s*\^*$"
run() {  # limit log script args...
  [ "$1" = 0 ] && return
  timeout "$1" python3 "benchmarks/$3" ${4:-} 2>&1 | grep --line-buffered -v "$NOISE" | tee "$OUT/$2"
}
run "${2:-150}" score.log score_gpu.py "${SCORE_ARGS:---archs ViT-L-14-336 --compile-modes none,default}"
run "${1:-420}" synth.log synth_gpu.py "${SYNTH_ARGS:---timed-batches 1 --variant attention_backend=cudnn --variant channels_last=false}"
run "${3:-0}" pipe.log pipeline_gpu.py "${PIPE_ARGS:-}"
