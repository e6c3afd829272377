"""Perplexity filter: rejects captions a causal language model finds improbable.

SynthVLM (through Data-Juicer) uses a KenLM model with a limit of 5500; KenLM has no wheel we
can rely on, so any transformers causal LM stands in. Perplexities of different models are on
different scales: choose `max` for the model you name.
"""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from factory import schema as S



class PerplexityFilter:
    """Stage: marks rows not rejected yet whose caption's perplexity exceeds `max_perplexity`."""

    def __init__(
        self,
        model: str,
        max_perplexity: float,
        batch_size: int = 32,
        max_length: int = 128,
        device: str = "cpu",
        dtype: str = "float32",
        torch_threads: int | None = None,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from factory.curate.judge import check_device, resolve_dtype

        if not model or max_perplexity is None:
            raise ValueError("curate.rules.perplexity needs model (a causal LM) and max (the limit) when enabled")
        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        self.max_perplexity, self.batch_size, self.max_length = float(max_perplexity), batch_size, max_length
        self.device = check_device(device, "curate.rules.perplexity.device")
        dtype = resolve_dtype(dtype, "curate.rules.perplexity.dtype")  # a bad name fails before the model loads
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        # Score the first word too: start from BOS where the tokenizer does not add it itself (GPT-2's way).
        bos = self.tokenizer.bos_token
        self.prefix = bos if bos and self.tokenizer("x")["input_ids"][:1] != [self.tokenizer.bos_token_id] else ""
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(self.device).eval()

    def perplexities(self, captions: list[str]) -> np.ndarray:
        """exp(mean negative log-likelihood per predicted token) of each caption; inf when it has < 2 tokens."""
        import torch

        out = np.empty(len(captions), dtype=np.float64)
        for start in range(0, len(captions), self.batch_size):
            part = captions[start : start + self.batch_size]
            enc = self.tokenizer([self.prefix + c for c in part], return_tensors="pt", padding=True, truncation=True, max_length=self.max_length).to(self.device)
            with torch.inference_mode():
                logits = self.model(**enc).logits.float()
            target = enc["input_ids"][:, 1:]
            mask = enc["attention_mask"][:, 1:].float()
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), target, reduction="none")
            n = mask.sum(dim=1)
            mean = (nll * mask).sum(dim=1) / n.clamp(min=1)
            ppl = torch.where(n > 0, mean.exp(), torch.full_like(mean, math.inf))
            out[start : start + len(part)] = ppl.cpu().numpy()
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        todo = pc.is_null(batch.column(S.REASON)).to_numpy(zero_copy_only=False)
        if not todo.any():
            return batch
        idx = np.nonzero(todo)[0]
        ppl = self.perplexities(batch.column(S.CAPTION).take(pa.array(idx)).to_pylist())
        reasons, details = batch.column(S.REASON).to_pylist(), batch.column(S.DETAIL).to_pylist()
        for i, p in zip(idx, ppl):
            if not p <= self.max_perplexity:  # NaN and inf fail too
                reasons[i], details[i] = S.R_PERPLEXITY, f"{p:.1f} > {self.max_perplexity:g}"
        batch = batch.set_column(batch.schema.get_field_index(S.REASON), S.REASON, pa.array(reasons, pa.string()))
        return batch.set_column(batch.schema.get_field_index(S.DETAIL), S.DETAIL, pa.array(details, pa.string()))
