#!/usr/bin/env bash
# The factory's main job, `python -m factory model=sdxl scorer=clip_l14_336`, through Ray Data on
# one GPU, against the synthesis stage alone: the device check of issue 16 (README.md beside this).
#
#   bash benchmarks/device/factory_gpu.sh          # device: from the repo root, .device/ carried (pack.sh)
#   bash benchmarks/device/factory_gpu.sh --cpu    # the same steps, tiny models, this venv (tests)
#   bash benchmarks/device/factory_gpu.sh --install-only   # device: only the install (for other benchmarks)
#
# Steps: install the carried wheels and Ray into /tmp/site (install.sh; GPU only); build the random-weight
# models and the captions (prepare.py); run the CLI; time DiffusionSynth alone with the run's
# settings and print the figures, the ratio last (measure.py). Each step
# runs with the time left before FACTORY_GPU_DEADLINE_S and logs to $OUT; a failed step ends the
# script with its log's last lines and one FAILED line. Installs, models and the inductor cache
# stay in /tmp, so a rerun on the same warm machine skips them.
# Environment: OUT (logs; default /tmp/factory-gpu-out), FACTORY_GPU_WORK (models, captions, the
# run; default /tmp/factory-gpu), CAPTIONS (128 | 8 with --cpu), STAGE_IMAGES (48 | 8),
# FACTORY_GPU_DEADLINE_S (570), PYTHON (--cpu only; default python3), FACTORY_ARGS (more Hydra
# overrides for the run, e.g. "model.attention_backend=cudnn": the stage alone takes them too,
# from the run's manifest).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
CPU=0 INSTALL_ONLY=0
case "${1:-}" in --cpu) CPU=1 ;; --install-only) INSTALL_ONLY=1 ;; "") ;; *) echo "usage: $0 [--cpu | --install-only]" >&2; exit 2 ;; esac
OUT=${OUT:-/tmp/factory-gpu-out}
WORK=${FACTORY_GPU_WORK:-/tmp/factory-gpu}
DEADLINE=${FACTORY_GPU_DEADLINE_S:-570}
RUN=$WORK/run
SITE=${FACTORY_GPU_SITE:-/tmp/site}
mkdir -p "$OUT" "$WORK" || exit 1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false FACTORY_CACHE=${FACTORY_CACHE:-$WORK/cache}
if [ $CPU = 1 ]; then
  PY=${PYTHON:-python3} CAPTIONS=${CAPTIONS:-8} STAGE_IMAGES=${STAGE_IMAGES:-8}
  MODEL=(model=tiny scorer=tiny synth.steps=1 select.k=4)
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  PY=python3 CAPTIONS=${CAPTIONS:-128} STAGE_IMAGES=${STAGE_IMAGES:-48}
  MODEL=(model=sdxl model.variant=null scorer=clip_l14_336)
  export PYTHONPATH=$SITE:$PWD
fi

fail() {  # step log why: the log's end, then one line
  tail -n 30 "$OUT/$2" 2>/dev/null
  echo "factory_gpu: FAILED at '$1' after $SECONDS s: $3 (log: \$OUT/$2)"
  exit 1
}

step() {  # name log command...: run with the time left; one line when done
  local name=$1 log=$2 left=$((DEADLINE - SECONDS)) rc
  shift 2
  [ $left -gt 5 ] || fail "$name" "$log" "no time left (FACTORY_GPU_DEADLINE_S=$DEADLINE)"
  timeout -k 15 $left "$@" >>"$OUT/$log" 2>&1
  rc=$?
  [ $rc = 0 ] || fail "$name" "$log" "exit $rc$([ $rc = 124 ] && echo ", out of time")"
  printf '[%4d s] %s: done\n' $SECONDS "$name"
}

keep_manifest() { if [ -f "$RUN/manifest.json" ]; then cp "$RUN/manifest.json" "$OUT/manifest.json"; fi; }
trap keep_manifest EXIT

[ $CPU = 1 ] || step "install wheels and Ray" install.log bash benchmarks/device/install.sh "$SITE" "$PY"
[ $INSTALL_ONLY = 0 ] || { cat "$OUT/install.log"; exit 0; }
step "prepare models and captions" prepare.log $PY benchmarks/device/prepare.py "$WORK" --captions "$CAPTIONS" $([ $CPU = 1 ] && echo --cpu)
rm -rf "$RUN"  # a fresh run: resuming would generate nothing
step "factory run through Ray Data" factory.log $PY -m factory "${MODEL[@]}" model.path="$WORK/model" \
  scorer.pretrained="$WORK/clip/open_clip_model.safetensors" input="$WORK/captions-$CAPTIONS.jsonl" output="$RUN" \
  ray.progress_bars=false progress_every_s=30 ${FACTORY_ARGS:-}
step "synthesis stage alone" stage.log $PY benchmarks/device/measure.py "$RUN/manifest.json" \
  "$WORK/captions-$CAPTIONS.jsonl" --images "$STAGE_IMAGES" --json "$OUT/stage.json" --summary "$OUT/summary.txt"
cat "$OUT/summary.txt"
