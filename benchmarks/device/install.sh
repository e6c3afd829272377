#!/usr/bin/env bash
# Installs what pack.sh put in .device/ into SITE for the image's PYTHON, once per machine:
#   bash benchmarks/device/install.sh SITE PYTHON [MODULE...]   (from the repo root; factory_gpu.sh calls it)
# The wheels through pip (--target, no index, no dependencies: the image's torch stays), then the
# slimmed Ray unpacked beside them; SITE/.complete marks a finished install. Ends with an import
# check of MODULE... (default: what the factory needs) that prints each one's version and file.
set -uo pipefail
SITE=$1 PY=$2
nvidia-smi -L 2>/dev/null || echo "nvidia-smi: none"
if [ ! -e "$SITE/.complete" ]; then
  ls .device/wheels/*.whl .device/ray-*.tar.xz >/dev/null || { echo "no .device/ here: run pack.sh and carry .device"; exit 1; }
  rm -rf "$SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .device/wheels/*.whl || exit 1
  # Python's tarfile, not tar -J: the image need not have xz.
  "$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' .device/ray-*.tar.xz "$SITE" || exit 1
  touch "$SITE/.complete"
fi
shift 2
MODULES=${*:-torch ray ray.data diffusers transformers open_clip hydra jsonschema}
PYTHONPATH=$SITE:$PWD "$PY" - $MODULES <<'CHECK'
import importlib
import sys

print("python", sys.version.split()[0])
for name in sys.argv[1:]:
    module = importlib.import_module(name)
    print(name, getattr(module, "__version__", "-"), module.__file__)
if "torch" in sys.modules:
    print("cuda available:", sys.modules["torch"].cuda.is_available())
CHECK
