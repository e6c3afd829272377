"""LLM judge: asks an instruction-tuned LLM whether each caption is a good image prompt (Yes/No).

SynthVLM keeps a caption only when the LLM answers Yes. Here the answer is parsed leniently
(case, punctuation, a leading space, "Yes." or "No, because ..."); an answer that is neither
is `unparseable` and kept or rejected by `on_unparseable`. Every judged row gets a verdict
column, which `VerdictLog` writes to the run's llm_judge/ folder (the manifest counts it).

Two backends share the prompt and the verdict logic:
- `hf`: transformers `generate` (greedy, a few new tokens, left padding; a long caption is
  cut to fit max_input_tokens, the instructions never) in the stage's own actor pool, CPU or GPU;
- `vllm`: vLLM engines through `ray.data.llm` (factory/engine/vllm.py): `VllmRequest` and
  `VllmVerdict` are its row-wise pre- and postprocess functions, `vllm_processor_kwargs` its config.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from factory import schema as S
from factory.devices import resolve_device, torch_dtype
from factory.errors import SettingError
from factory.io import files
from factory.io.write import keys_digest
from factory.stage import CaptionFilter, Resources, Stage, mark

YES, NO, UNPARSEABLE = "yes", "no", "unparseable"
VERDICTS = (YES, NO, UNPARSEABLE)
POLICIES = ("keep", "reject")

# Leading noise a chat model may put before its verdict: spaces, quotes, markdown, "Answer:".
_LEAD = re.compile(r"^[\s\"'`*_#>\-\[\(]*(?:(?:final\s+)?answer\s*[:\-]\s*[\s\"'`*_\[\(]*)?", re.IGNORECASE)
_FIRST_WORD = re.compile(r"[^\W\d_]+")


def parse_verdict(answer: str | None) -> str:
    """yes | no | unparseable: the first word of the answer, after leading noise, case-insensitively."""
    if not answer:
        return UNPARSEABLE
    rest = _LEAD.sub("", answer, count=1)
    m = _FIRST_WORD.match(rest)
    if not m:
        return UNPARSEABLE
    word = m.group(0).lower()
    return word if word in (YES, NO) else UNPARSEABLE


def outcome(answer: str | None, on_unparseable: str) -> tuple[str, str | None, str | None]:
    """(verdict, reason, detail) for one answer: reason is llm_judge for No, and for unparseable under 'reject'."""
    verdict = parse_verdict(answer)
    if verdict == YES or (verdict == UNPARSEABLE and on_unparseable == "keep"):
        return verdict, None, None
    shown = " ".join((answer or "").split())[:80]
    return verdict, S.R_LLM_JUDGE, f"{verdict}: {shown!r}"


def check_policy(on_unparseable: str) -> str:
    if on_unparseable not in POLICIES:
        raise SettingError("on_unparseable", f"={on_unparseable!r}: expected one of {', '.join(POLICIES)}")
    return on_unparseable


class JudgePrompt:
    """The judge's messages for one caption; `{caption}` in the user text is replaced literally."""

    def __init__(self, system: str | None, user: str):
        if "{caption}" not in user:
            raise ValueError("curate.llm.prompt.user must contain {caption}")
        self.system, self.user = system, user

    def messages(self, caption: str) -> list[dict]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + [{"role": "user", "content": self.user.replace("{caption}", caption)}]

    def plain_text(self, caption: str) -> str:
        """For a tokenizer without a chat template (a base model)."""
        parts = [self.system] if self.system else []
        return "\n\n".join(parts + [self.user.replace("{caption}", caption), "Answer:"])


def apply_verdicts(batch: pa.Table, judged: np.ndarray, answers: list[str | None], on_unparseable: str) -> pa.Table:
    """Sets reason/detail of the judged rows (a boolean mask) and adds the verdict and answer columns."""
    verdicts: list[str | None] = [None] * batch.num_rows
    raw: list[str | None] = [None] * batch.num_rows
    marks = {}
    for i, answer in zip(np.nonzero(judged)[0], answers):
        verdicts[i], reason, detail = outcome(answer, on_unparseable)
        raw[i] = answer
        marks[int(i)] = (reason, detail) if reason is not None else None
    batch = mark(batch, marks)
    return batch.append_column(S.VERDICT, pa.array(verdicts, pa.string())).append_column(S.ANSWER, pa.array(raw, pa.string()))


BACKENDS = ("hf", "vllm")


@dataclass
class LLMJudge(CaptionFilter):
    """Caption filter: an instruction-tuned LLM's Yes/No on each caption (SynthVLM's step 3).

    Judged rows get the verdict and the raw answer as columns, logged to llm_judge/. The hf
    backend runs `generate` in this stage's actor pool; the vllm backend hands the rows to vLLM
    engines through ray.data.llm (the engine's doing, see `engine()`).
    """

    config_name: ClassVar[str] = "llm_judge"
    name: ClassVar[str] = "llm_judge"
    pool: ClassVar[str] = "judge"
    needs: ClassVar[Resources] = Resources(cpus=0.25, gpus=1.0, gpu_share=0.1)
    reasons: ClassVar[tuple[str, ...]] = (S.R_LLM_JUDGE,)
    log_dir: ClassVar[str] = "llm_judge"  # the verdict log, under the output
    speed_only: ClassVar[frozenset[str]] = frozenset({"batch_size", "device", "concurrency", "tensor_parallel_size", "engine_kwargs"})

    enabled: bool = False
    backend: str = "hf"  # hf (transformers generate in an actor pool, CPU or GPU) | vllm (ray.data.llm, pip install .[llm])
    model: Optional[str] = None  # hub id or local folder of an instruction-tuned causal LM
    prompt: dict = field(default_factory=lambda: {"system": None, "user": "{caption}"})  # conf/curate/judge_prompt.yaml
    on_unparseable: str = "keep"  # keep | reject an answer that is neither Yes nor No
    max_new_tokens: int = 4
    batch_size: int = 16
    device: str = "cpu"  # hf only
    dtype: str = "float32"  # hf only
    max_input_tokens: int = 512  # hf only: a longer prompt loses the end of its caption, never the instructions
    concurrency: int = 1  # vllm: engine replicas
    tensor_parallel_size: int = 1  # vllm
    max_model_len: int = 2048  # vllm
    engine_kwargs: dict = field(default_factory=dict)  # vllm: passed to the engine as is

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backend not in BACKENDS:
            raise SettingError("backend", f"={self.backend!r}: expected hf or vllm")
        check_policy(self.on_unparseable)
        self.judge_prompt = JudgePrompt(self.prompt.get("system"), self.prompt.get("user", ""))
        if self.enabled and not self.model:
            raise SettingError("model", " is not set: name a hub id or a local folder of a causal LM")
        torch_dtype(self.dtype, "curate.llm.dtype")  # a bad name fails before anything loads

    def engine(self) -> str:
        return "vllm" if self.backend == "vllm" else super().engine()

    def side_log(self, output: str) -> Stage:
        return VerdictLog(directory=files.join(output, self.log_dir))

    def side_counts(self, output: str) -> dict:
        return count_verdicts(files.join(output, self.log_dir))

    def setup(self) -> None:
        self._device = resolve_device(self.device, "curate.llm.device")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model)
        if self.tokenizer.pad_token is None:  # many causal LMs ship without one; any id works under the mask
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.chat = bool(getattr(self.tokenizer, "chat_template", None))
        frame = len(self.prompt_ids(""))
        if frame >= self.max_input_tokens:
            raise SettingError("max_input_tokens", f"={self.max_input_tokens} leaves no room for the caption: the judge "
                               f"prompt alone is {frame} tokens; raise it or shorten curate.llm.prompt").under("curate.llm.max_input_tokens")
        dtype = torch_dtype(self.dtype, "curate.llm.dtype")
        self.lm = AutoModelForCausalLM.from_pretrained(self.model, dtype=dtype).to(self._device).eval()

    def prompt_text(self, caption: str) -> str:
        if self.chat:
            return self.tokenizer.apply_chat_template(self.judge_prompt.messages(caption), tokenize=False, add_generation_prompt=True)
        return self.judge_prompt.plain_text(caption)

    def prompt_ids(self, caption: str) -> list[int]:
        # The template already holds any special tokens the model expects.
        return self.tokenizer(self.prompt_text(caption), add_special_tokens=not self.chat)["input_ids"]

    def input_ids(self, caption: str) -> list[int]:
        """The prompt's token ids, its caption cut from the end until they fit in max_input_tokens."""
        while True:
            ids = self.prompt_ids(caption)
            over = len(ids) - self.max_input_tokens
            if over <= 0:  # the empty caption always fits (checked in setup)
                return ids
            caption = self.drop_last_tokens(caption, over)

    def drop_last_tokens(self, caption: str, n: int) -> str:
        """`caption` less its last `n` tokens (counted alone; in the prompt they may merge differently,
        which the caller's next round fixes), and always at least one character shorter."""
        enc = self.tokenizer(caption, add_special_tokens=False, return_offsets_mapping=self.tokenizer.is_fast)
        keep = max(len(enc["input_ids"]) - n, 0)
        if self.tokenizer.is_fast:  # cut the original text: decoding would renormalize it
            end = enc["offset_mapping"][keep - 1][1] if keep else 0
            cut = caption[:end]
        else:
            cut = self.tokenizer.decode(enc["input_ids"][:keep], skip_special_tokens=True)
        return cut if len(cut) < len(caption) else caption[:-1]

    def batch_inputs(self, captions: list[str]) -> dict:
        """Left-padded input_ids and attention_mask tensors: generated tokens follow every prompt directly."""
        ids = [self.input_ids(c) for c in captions]
        width = max(map(len, ids))
        pad = self.tokenizer.pad_token_id
        return {"input_ids": torch.tensor([[pad] * (width - len(x)) + x for x in ids]),
                "attention_mask": torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])}

    def answers(self, captions: list[str]) -> list[str]:
        """The decoded new tokens for each caption."""
        out: list[str] = []
        for start in range(0, len(captions), self.batch_size):
            enc = {k: v.to(self._device) for k, v in self.batch_inputs(captions[start : start + self.batch_size]).items()}
            with torch.inference_mode():
                gen = self.lm.generate(**enc, do_sample=False, max_new_tokens=self.max_new_tokens,
                                       pad_token_id=self.tokenizer.pad_token_id)
            new = gen[:, enc["input_ids"].shape[1] :]
            out.extend(self.tokenizer.batch_decode(new, skip_special_tokens=True))
        return out

    def process(self, batch: pa.Table) -> pa.Table:
        judged = pc.is_null(batch.column(S.REASON)).to_numpy(zero_copy_only=False)
        captions = batch.column(S.CAPTION).filter(pa.array(judged)).to_pylist()
        return apply_verdicts(batch, judged, self.answers(captions) if captions else [], self.on_unparseable)


# ---- vLLM backend: row functions for ray.data.llm's processor ---------------------------------


class VllmRequest:
    """Preprocess: a row → the same row plus chat `messages` and greedy `sampling_params`."""

    def __init__(self, system: str | None, user: str, max_new_tokens: int = 4):
        self.prompt, self.max_new_tokens = JudgePrompt(system, user), max_new_tokens

    def __call__(self, row: dict) -> dict:
        # Rows rejected upstream never reach the judge: the pipeline writes them out first.
        return dict(row, messages=self.prompt.messages(row[S.CAPTION]),
                    sampling_params=dict(temperature=0.0, max_tokens=self.max_new_tokens))


class VllmVerdict:
    """Postprocess: the engine's `generated_text` → reason/detail and the verdict columns."""

    def __init__(self, on_unparseable: str = "keep", columns: list[str] | None = None):
        self.on_unparseable = check_policy(on_unparseable)
        self.columns = columns or [f.name for f in S.CAPTION_ROW]

    def __call__(self, row: dict) -> dict:
        out = {c: row.get(c) for c in self.columns}
        answer = row.get("generated_text")
        out[S.VERDICT], reason, detail = outcome(answer, self.on_unparseable)
        out[S.ANSWER] = answer
        if reason is not None:
            out[S.REASON], out[S.DETAIL] = reason, detail
        return out


JUDGED_ROW = pa.schema(list(S.CAPTION_ROW) + [pa.field(S.VERDICT, pa.string()), pa.field(S.ANSWER, pa.string())])


def judged_rows(batch: pa.Table) -> pa.Table:
    """Row-wise maps infer column types per block (all-null → null type): fix them to JUDGED_ROW."""
    return batch.select(JUDGED_ROW.names).cast(JUDGED_ROW)


def vllm_processor_kwargs(judge: LLMJudge) -> dict:
    """Keyword arguments of ray.data.llm.vLLMEngineProcessorConfig from curate.llm."""
    if not judge.model:
        raise ValueError("curate.llm.model is not set: name a hub id or a local folder of a causal LM")
    engine = {"tensor_parallel_size": int(judge.tensor_parallel_size), "max_model_len": int(judge.max_model_len)}
    engine.update(judge.engine_kwargs or {})
    return dict(
        model_source=judge.model,
        batch_size=int(judge.batch_size),
        concurrency=int(judge.concurrency),
        engine_kwargs=engine,
        chat_template_stage=True,
        tokenize_stage=True,
        detokenize_stage=True,
    )


# ---- verdict log -----------------------------------------------------------------------------

VERDICT_LOG = pa.schema([pa.field(S.ID, pa.string()), pa.field(S.VERDICT, pa.string()), pa.field(S.ANSWER, pa.string()), pa.field(S.SOURCE, pa.string())])


@dataclass
class VerdictLog(Stage):
    """Stage: writes (id, verdict, answer, source) of every judged row to `directory`; passes the batch on."""

    name: ClassVar[str] = "verdict_log"

    directory: str = ""

    def prepare(self) -> None:
        files.makedirs(self.directory)  # on the driver; tasks write with make_parent=False

    def process(self, batch: pa.Table) -> pa.Table:
        judged = batch.filter(pc.is_valid(batch.column(S.VERDICT)))
        if judged.num_rows:
            table = judged.select(VERDICT_LOG.names).cast(VERDICT_LOG)
            name = f"part-{keys_digest(table.column(S.SOURCE).to_pylist())}.parquet"
            files.write_parquet_atomic(files.join(self.directory, name), table, make_parent=False)
        return batch


def count_verdicts(directory: str) -> dict:
    """{yes, no, unparseable} over the verdict log (zeros when nothing was judged)."""
    return {**dict.fromkeys(VERDICTS, 0), **files.count_values(files.list_files(directory, ".parquet"), S.VERDICT)}
