"""The device check of issue 16: pack.sh, factory_gpu.sh and their helpers (README.md)."""
