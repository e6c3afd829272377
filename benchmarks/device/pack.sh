#!/usr/bin/env bash
# Builds .device/ (ignored by git): what a device call carries, beside the working tree, to run
# benchmarks/device/factory_gpu.sh there. Run on a CPU machine that reaches PyPI, from anywhere:
#
#   bash benchmarks/device/pack.sh            # .device/wheels/*.whl + .device/ray-2.60.0-slim.tar.xz
#   bash benchmarks/device/pack.sh --dry-run  # what it would fetch or build; checks the list; no network
#
# Wheels: wheels.txt, for CPython 3.12 manylinux x86_64, without dependencies (the image has the
# rest: check_wheels.py checks that from the wheels' own metadata). Ray: its 2.60.0 cp312 wheel
# unpacked without ray/jars, rllib, serve, tune and test folders (a local Ray with Ray Data needs
# none of them; the dashboard's agent, which every node starts, stays), packed as .tar.xz.
# Downloads and the slimmed Ray are cached (DEVICE_PACK_CACHE, default ~/.cache/synth-factory/
# device-pack), so a second run fetches and compresses nothing. Prints the total that travels
# (.device/ + the working tree) and exits 1 above 60 MiB (the device's limit is 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=benchmarks/device
DEST=${DEVICE_PACK_DIR:-.device}
CACHE=${DEVICE_PACK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/synth-factory/device-pack}
PYTHON=${PYTHON:-python3}  # any Python with pip and packaging (the project's venv)
LIMIT_MIB=60
RAY_VERSION=2.60.0
DROP=(ray/jars ray/rllib ray/serve ray/tune)
# What a local Ray with Ray Data starts or imports: must survive the slimming.
NEED=(ray/_raylet.so ray/core/src/ray/gcs/gcs_server ray/core/src/ray/raylet/raylet ray/dashboard/agent.py
      ray/_private/runtime_env/agent/main.py ray/_private/workers/default_worker.py ray/data/__init__.py
      ray/air/__init__.py ray/train/__init__.py ray/scripts/scripts.py)
PLATFORM=(--only-binary=:all: --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux_2_28_x86_64 --python-version 3.12 --implementation cp --no-deps)
DRY=0
case "${1:-}" in --dry-run) DRY=1 ;; "") ;; *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;; esac
RAY_TAR=ray-$RAY_VERSION-slim.tar.xz
SLIM_KEY=$(printf '%s\n' "${DROP[@]}" | cksum | cut -d' ' -f1)  # another drop list: another tarball
shopt -s nullglob nocaseglob

cached_wheel() {  # spec → the cached wheel's path, if any
  local name=${1%%==*} version=${1#*==}
  local files=("$CACHE"/"$(echo "$name" | tr -- '-.' '__')"-"$version"-*.whl)
  [ ${#files[@]} -gt 0 ] && echo "${files[0]}"
}

fetch() {  # spec how: into the cache, unless there already
  cached_wheel "$1" >/dev/null && return 0
  if [ "$2" = sdist ]; then  # no wheel on PyPI: build one here (pure Python only)
    "$PYTHON" -m pip wheel -q --no-deps --no-binary=:all: -w "$CACHE" "$1"
  else
    "$PYTHON" -m pip download -q "${PLATFORM[@]}" -d "$CACHE" "$1"
  fi
  cached_wheel "$1" >/dev/null || { echo "pack: no wheel of $1 after fetching it" >&2; return 1; }
}

slim_ray() {  # the cached slimmed Ray tarball, built once per drop list
  local out=$CACHE/ray-$RAY_VERSION-slim-$SLIM_KEY.tar.xz tmp
  [ -f "$out" ] && return 0
  fetch "ray==$RAY_VERSION" wheel
  tmp=$(mktemp -d "$CACHE/.ray-slim.XXXXXX")
  unzip -q "$(cached_wheel "ray==$RAY_VERSION")" -d "$tmp"
  (cd "$tmp" && rm -rf "${DROP[@]}" && find ray -depth -type d \( -name tests -o -name test \) -exec rm -rf {} +)
  for f in "${NEED[@]}"; do [ -e "$tmp/$f" ] || { echo "pack: the slimmed Ray lacks $f" >&2; rm -rf "$tmp"; return 1; }; done
  echo "pack: compressing the slimmed Ray ($(du -sm "$tmp" | cut -f1) MiB unpacked; minutes on 2 cores)"
  tar -C "$tmp" -cf - ray "ray-$RAY_VERSION.dist-info" | xz -T0 -6 >"$out.part"
  mv "$out.part" "$out"
  rm -rf "$tmp"
}

specs() { grep -v '^\s*#' "$HERE/wheels.txt" | sed 's/#.*//' | awk 'NF {print $1, ($2 == "sdist" ? "sdist" : "wheel")}'; }

"$PYTHON" "$HERE/check_wheels.py" --list "$HERE/wheels.txt"
if [ $DRY = 1 ]; then
  while read -r spec how; do
    echo "$spec: $(cached_wheel "$spec" >/dev/null && echo cached || echo "to fetch ($how)")"
  done < <(specs)
  echo "ray==$RAY_VERSION: $([ -f "$CACHE/ray-$RAY_VERSION-slim-$SLIM_KEY.tar.xz" ] && echo cached || echo "to fetch and build"), slimmed: without ${DROP[*]}"
  echo "into $DEST/ (cache $CACHE)"
  exit 0
fi

mkdir -p "$CACHE"
while read -r spec how; do fetch "$spec" "$how"; done < <(specs)
slim_ray
rm -rf "$DEST/wheels" "$DEST/$RAY_TAR"
mkdir -p "$DEST/wheels"
wheels=()
while read -r spec _; do wheels+=("$(cached_wheel "$spec")"); done < <(specs)
cp "${wheels[@]}" "$DEST/wheels/"
cp "$CACHE/ray-$RAY_VERSION-slim-$SLIM_KEY.tar.xz" "$DEST/$RAY_TAR"
"$PYTHON" "$HERE/check_wheels.py" --list "$HERE/wheels.txt" --ray "$(cached_wheel "ray==$RAY_VERSION")" "$DEST"/wheels/*.whl

pack_bytes=$(du -sb "$DEST" | cut -f1)
tree_bytes=$(git ls-files -z -co --exclude-standard | du -cb --files0-from=- | tail -1 | cut -f1)
total=$((pack_bytes + tree_bytes))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }
echo "pack: $DEST/ $(mib "$pack_bytes") MiB ($(ls "$DEST/wheels" | wc -l) wheels, $RAY_TAR $(mib "$(stat -c %s "$DEST/$RAY_TAR")") MiB) + working tree $(mib "$tree_bytes") MiB = $(mib $total) MiB (limit $LIMIT_MIB)"
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
  echo "pack: FAILED: $(mib $total) MiB would travel, above $LIMIT_MIB MiB" >&2
  exit 1
fi
