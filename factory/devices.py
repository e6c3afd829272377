"""Device and dtype names as the config writes them, checked in one line each."""
from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def torch_dtype(name: str, key: str = "dtype") -> torch.dtype:
    """The torch dtype of a name or alias in DTYPES; `key` is the config key named in the error."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"{key}={name!r}: expected one of {', '.join(sorted(DTYPES))}") from None


def resolve_device(device: str, key: str = "model.device") -> str:
    """'auto' → cuda when there is one, else cpu; `key` is the config key named in the error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"{key}={device} but this worker sees no CUDA device")
    return device
