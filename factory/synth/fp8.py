"""`model.quantize=fp8`: torchao's float8 dynamic quantization of the denoiser's linear layers.

Each selected nn.Linear gets float8 (e4m3) weights with a scale per output row (per tensor when the
weights are not bfloat16: torchao's row-wise scaling takes bfloat16 only), and its input activations
are scaled and cast to float8 on the fly at every call, so the matrix products run on the GPU's fp8
tensor cores (torch._scaled_mm). Those exist from compute capability 8.9 on (Ada, Hopper,
Blackwell); anywhere else the setting is refused in one line, not ignored. It changes pixels, so it
is part of the resume fingerprint (not speed_only). Applied in setup after loading and before
torch.compile; the text encoders and the VAE stay in the model's dtype.

torchao is optional (`pip install 'synth-factory[fp8]'`): imported only when the setting is on.
"""
from __future__ import annotations

import importlib.util

import torch
from torch import nn

from factory.errors import SettingError

QUANTIZE = ("fp8",)
FP8_CAPABILITY = (8, 9)
INSTALL = "pip install 'synth-factory[fp8]' (torchao)"
# torchao leaves a layer whose in or out features are not a multiple of 16 in bf16 without a word
# (the fp8 matrix-product kernels need it): the filter says so up front, so what is selected is
# exactly what is quantized.
FP8_ALIGN = 16


def fp8_linear(module: nn.Module, fqn: str = "") -> bool:
    """torchao's filter_fn: an nn.Linear whose in and out features are multiples of 16."""
    return isinstance(module, nn.Linear) and module.in_features % FP8_ALIGN == 0 and module.out_features % FP8_ALIGN == 0


def fp8_targets(denoiser: nn.Module) -> list[str]:
    """The qualified names of the layers `quantize_denoiser` turns to fp8."""
    return [name for name, m in denoiser.named_modules() if fp8_linear(m, name)]


def check_fp8_device(device: str, key: str = "model.quantize") -> None:
    """A CUDA device of compute capability >= 8.9, or one line naming `key`."""
    if not str(device).startswith("cuda"):
        raise SettingError(key, f"=fp8 needs a CUDA GPU of compute capability 8.9 or newer (Ada, Hopper, Blackwell); "
                                f"this generator runs on {device}")
    if not torch.cuda.is_available():
        return  # the driver of a cluster may see no GPU: the worker checks again in setup
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < FP8_CAPABILITY:
        raise SettingError(key, f"=fp8 needs compute capability 8.9 or newer (fp8 tensor cores); "
                                f"{torch.cuda.get_device_name(device)} has {major}.{minor}")


def check_torchao(key: str = "model.quantize") -> None:
    if importlib.util.find_spec("torchao") is None:
        raise SettingError(key, f"=fp8 needs torchao, which is not installed: {INSTALL}")


def quantize_denoiser(denoiser: nn.Module, key: str = "model.quantize") -> int:
    """Quantize `denoiser`'s fp8_linear layers in place; returns how many."""
    check_torchao(key)
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor, quantize_

    bf16 = next(denoiser.parameters()).dtype == torch.bfloat16
    count = len(fp8_targets(denoiser))
    quantize_(denoiser, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow() if bf16 else PerTensor()),
              filter_fn=fp8_linear)
    return count
