#!/usr/bin/env bash
# The device check, as one script: the three GPU benchmarks with per-script time limits, logs in $OUT.
# Run from a checkout whose factory/, benchmarks/, conf/ are under .gpu/ and wheels under .whl/:
#   bash .gpu/benchmarks/gpu_run.sh [synth_seconds score_seconds pipeline_seconds]
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/.gpu PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false FACTORY_CACHE=/tmp/factory-cache
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
cd .gpu
nvidia-smi -L | tee "$OUT/device.log"
python3 -c "import torch, diffusers, transformers, open_clip; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'open_clip', open_clip.__version__)" 2>&1 | tee -a "$OUT/device.log"
timeout "${1:-270}" python3 benchmarks/synth_gpu.py --ablate ${SYNTH_ARGS:-} 2>&1 | grep --line-buffered -v "should be kept in float32\|warn_once\|lru_cache\|This call originates\|is_torch_version\|^\s*\^*$" | tee "$OUT/synth.log"
timeout "${2:-70}" python3 benchmarks/score_gpu.py ${SCORE_ARGS:-} 2>&1 | tee "$OUT/score.log"
timeout "${3:-180}" python3 benchmarks/pipeline_gpu.py ${PIPE_ARGS:-} 2>&1 | grep --line-buffered -v "should be kept in float32\|warn_once\|lru_cache\|This call originates\|is_torch_version\|^\s*\^*$" | tee "$OUT/pipe.log"
