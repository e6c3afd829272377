"""Perplexity filter: rejects captions a causal language model finds improbable.

SynthVLM (through Data-Juicer) uses a KenLM model with a limit of 5500; KenLM has no wheel we
can rely on, so any transformers causal LM stands in. Perplexities of different models are on
different scales: choose `max` for the model you name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from factory import schema as S
from factory.devices import resolve_device, torch_dtype
from factory.errors import SettingError
from factory.stage import CaptionFilter, Resources


@dataclass
class PerplexityFilter(CaptionFilter):
    """Caption filter: rejects captions whose perplexity under a causal LM exceeds `max`."""

    config_name: ClassVar[str] = "perplexity"
    name: ClassVar[str] = "perplexity"
    pool: ClassVar[str] = "perplexity"
    needs: ClassVar[Resources] = Resources(cpus=0.25, gpus=0.5, gpu_share=0.1)
    reasons: ClassVar[tuple[str, ...]] = (S.R_PERPLEXITY,)
    speed_only: ClassVar[frozenset[str]] = frozenset({"batch_size", "device"})

    enabled: bool = False
    model: Optional[str] = None  # hub id or local folder of a causal LM (transformers AutoModelForCausalLM)
    max: Optional[float] = None  # reject above this perplexity; depends on the model (KenLM's 5500 does not carry over)
    batch_size: int = 32
    max_length: int = 128  # tokens per caption scored
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.enabled and (not self.model or self.max is None):
            raise SettingError("model", ": the perplexity filter needs model (a causal LM) and max (the limit) when enabled")
        torch_dtype(self.dtype, "curate.perplexity.dtype")  # a bad name fails before anything loads

    def setup(self) -> None:
        self._device = resolve_device(self.device, "curate.perplexity.device")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        # Score the first word too: start from BOS where the tokenizer does not add it itself (GPT-2's way).
        bos = self.tokenizer.bos_token
        self.prefix = bos if bos and self.tokenizer("x")["input_ids"][:1] != [self.tokenizer.bos_token_id] else ""
        dtype = torch_dtype(self.dtype, "curate.perplexity.dtype")
        self.lm = AutoModelForCausalLM.from_pretrained(self.model, dtype=dtype).to(self._device).eval()

    def perplexities(self, captions: list[str]) -> np.ndarray:
        """exp(mean negative log-likelihood per predicted token) of each caption; inf when it has < 2 tokens."""
        out = np.empty(len(captions), dtype=np.float64)
        for start in range(0, len(captions), self.batch_size):
            part = captions[start : start + self.batch_size]
            enc = self.tokenizer([self.prefix + c for c in part], return_tensors="pt", padding=True, truncation=True,
                                 max_length=self.max_length).to(self._device)
            with torch.inference_mode():
                logits = self.lm(**enc).logits.float()
            target = enc["input_ids"][:, 1:]
            mask = enc["attention_mask"][:, 1:].float()
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), target, reduction="none")
            n = mask.sum(dim=1)
            mean = (nll * mask).sum(dim=1) / n.clamp(min=1)
            ppl = torch.where(n > 0, mean.exp(), torch.full_like(mean, math.inf))
            out[start : start + len(part)] = ppl.cpu().numpy()
        return out

    def judge(self, captions: list[str]) -> list[tuple[str, str] | None]:
        # NaN and inf fail too
        return [None if p <= self.max else (S.R_PERPLEXITY, f"{p:.1f} > {self.max:g}") for p in self.perplexities(captions)]
