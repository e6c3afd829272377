"""LLM judge: the verdict parser, the hf backend on tiny LMs, the verdict log, the vLLM processor's config."""
from __future__ import annotations

import sys

import pyarrow as pa
import pytest

from factory import schema as S
from factory.config import compose
from factory.curate import judge as J

ANSWERS = {
    "Yes": "yes", "yes": "yes", " Yes.": "yes", "YES!": "yes", "\nyes, it is concrete": "yes", "**Yes**": "yes",
    "Answer: Yes": "yes", '"Yes"': "yes", "- yes": "yes", "Final answer: YES.": "yes",
    "No": "no", "no.": "no", " No, because it is abstract.": "no", "NO": "no", "No!": "no", "(no)": "no",
    "": "unparseable", None: "unparseable", "Maybe": "unparseable", "Yesterday": "unparseable",
    "Not really": "unparseable", "I think yes": "unparseable", "Y": "unparseable", "42": "unparseable", "...": "unparseable",
    "Nope": "unparseable", "Yes-no": "yes",
}


@pytest.mark.parametrize("answer,verdict", list(ANSWERS.items()))
def test_parse_verdict(answer, verdict):
    assert J.parse_verdict(answer) == verdict


def test_outcome_policy():
    assert J.outcome("Yes.", "reject") == ("yes", None, None)
    assert J.outcome("No, because it is vague", "keep") == ("no", S.R_LLM_JUDGE, "no: 'No, because it is vague'")
    assert J.outcome("hmm", "keep") == ("unparseable", None, None)
    assert J.outcome("hmm", "reject") == ("unparseable", S.R_LLM_JUDGE, "unparseable: 'hmm'")
    with pytest.raises(ValueError, match="on_unparseable='drop'"):
        J.check_policy("drop")


def caption_rows(captions, reasons=None):
    n = len(captions)
    return pa.table({S.ID: [str(i) for i in range(n)], S.CAPTION: captions, S.SOURCE: [f"f:{i + 1}" for i in range(n)],
                     S.POS: pa.array(range(n), pa.int64()), S.RAW: captions,
                     S.REASON: pa.array(reasons or [None] * n, pa.string()), S.DETAIL: pa.array([None] * n, pa.string())})


def hf_judge(path, system, user, **settings):
    """The LLM judge stage (backend hf) on a saved model, set up as an actor sets it up."""
    return J.LLMJudge(enabled=True, model=str(path), prompt={"system": system, "user": user}, **settings).loaded()


@pytest.fixture(scope="module")
def prompt():
    return compose()["curate"]["llm"]["prompt"]


def test_hf_judge_gives_real_verdicts_through_generate(tmp_path, prompt):
    """A hand-set tiny Llama answers No for 'cat', 'maybe' for 'dog', else Yes: verdicts follow the captions."""
    from tests.fixtures.tiny_lm import save_keyword_judge_lm

    path = save_keyword_judge_lm(tmp_path / "kw")
    caps = ["A lighthouse near a busy harbor.", "A tabby cat in a library window, with high contrast shadows.",
            "A dog on a street.", "Short.", "A cat", "A very long caption about a lighthouse " * 8]
    judge = hf_judge(str(path), prompt["system"], prompt["user"], on_unparseable="reject", batch_size=4)
    assert judge.chat  # the tokenizer's chat template is applied
    out = judge(caption_rows(caps, [None, None, None, "too_short", None, None]))
    verdicts = out.column(S.VERDICT).to_pylist()
    assert verdicts == ["yes", "no", "unparseable", None, "no", "yes"]  # the pre-rejected row is not judged
    assert out.column(S.REASON).to_pylist() == [None, "llm_judge", "llm_judge", "too_short", "llm_judge", None]
    assert out.column(S.DETAIL).to_pylist()[2].startswith("unparseable: 'maybe")
    keep = hf_judge(str(path), prompt["system"], prompt["user"], on_unparseable="keep")
    assert keep(caption_rows(caps[2:3])).column(S.REASON).to_pylist() == [None]


def test_hf_judge_on_random_weights_and_the_verdict_log(tmp_path, prompt):
    from tests.fixtures.tiny_lm import save_tiny_causal_lm

    path = save_tiny_causal_lm(tmp_path / "rand", prompt["system"] + " " + prompt["user"], seed=0)
    judge = hf_judge(str(path), prompt["system"], prompt["user"], on_unparseable="reject", max_new_tokens=3)
    caps = [f"A red dog number {i} on the street" for i in range(7)]
    out = judge(caption_rows(caps, [None] * 6 + ["duplicate_id"]))
    answers = out.column(S.ANSWER).to_pylist()
    assert all(isinstance(a, str) for a in answers[:6]) and answers[6] is None
    verdicts = out.column(S.VERDICT).to_pylist()[:6]
    assert verdicts == [J.parse_verdict(a) for a in answers[:6]]
    n_rejected = sum(r == "llm_judge" for r in out.column(S.REASON).to_pylist())
    assert n_rejected == sum(v != "yes" for v in verdicts)  # under 'reject' only a Yes survives
    log_dir = tmp_path / "llm_judge"
    J.VerdictLog(str(log_dir))(out)
    J.VerdictLog(str(log_dir))(out)  # a retried task rewrites the same file: nothing counted twice
    counts = J.count_verdicts(str(log_dir))
    assert set(counts) == {"yes", "no", "unparseable"} and sum(counts.values()) == 6
    assert counts == {v: verdicts.count(v) for v in ("yes", "no", "unparseable")}


@pytest.fixture(scope="module")
def ray_here():
    """A Ray of this test's own (address=local: never another process's cluster on a shared machine)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield ray
    if started:
        ray.shutdown()


def test_vllm_processor_is_built_from_our_config_without_vllm(ray_here, tmp_path):
    """The vllm backend's Ray Data processor, built (not run) from curate.llm: stages and engine settings."""
    from ray.data.llm import vLLMEngineProcessorConfig

    from factory.engine import vllm
    from factory.job import load_job
    from tests.fixtures.tiny_lm import save_tiny_causal_lm

    job = load_job(compose(["curate.llm.enabled=true", "curate.llm.backend=vllm", "curate.llm.tensor_parallel_size=2",
                            "curate.llm.max_model_len=1024", "curate.llm.batch_size=32", "curate.llm.concurrency=3",
                            "+curate.llm.engine_kwargs.enable_prefix_caching=true",
                            f"curate.llm.model={save_tiny_causal_lm(tmp_path / 'lm')}"]))
    (llm,) = job.pipeline.late_filters()
    assert llm.engine() == "vllm" and llm not in job.pipeline.model_stages()  # vLLM sizes its own engines
    kwargs = J.vllm_processor_kwargs(llm)
    cfg = vLLMEngineProcessorConfig(**kwargs)  # Ray's own validation of our settings
    assert cfg.model_source == llm.model and cfg.batch_size == 32 and cfg.concurrency == 3
    assert cfg.engine_kwargs["tensor_parallel_size"] == 2 and cfg.engine_kwargs["max_model_len"] == 1024
    assert cfg.engine_kwargs["enable_prefix_caching"] is True
    ds = vllm.apply(ray_here.data.from_arrow(caption_rows(["A red car."])), llm)
    plan = str(ds)
    for stage in ("ChatTemplateUDF", "TokenizeUDF", "vLLMEngineStageUDF", "DetokenizeUDF", "_preprocess", "_postprocess"):
        assert stage in plan
    if "vllm" not in sys.modules:  # building must not have imported it (it is only there with the llm extra)
        assert not any(m.startswith("vllm") for m in sys.modules)
    # The row functions the processor runs, on a row as the engine returns it.
    req = J.VllmRequest(llm.prompt["system"], llm.prompt["user"], 4)(caption_rows(["A red car."]).to_pylist()[0])
    assert req["messages"][-1]["content"].count("A red car.") == 1 and req["sampling_params"] == {"temperature": 0.0, "max_tokens": 4}
    post = J.VllmVerdict("reject")(dict(req, generated_text=" No, it is vague", generated_tokens=[1]))
    assert post[S.REASON] == "llm_judge" and post[S.VERDICT] == "no" and set(post) == set(S.CAPTION_ROW.names) | {S.VERDICT, S.ANSWER}


def test_judge_needs_a_model():
    from factory.job import load_job

    with pytest.raises(ValueError, match="curate.llm.model is not set"):
        load_job(compose(["curate.llm.enabled=true", "curate.llm.backend=vllm"]))
    with pytest.raises(ValueError, match=r"must contain \{caption\}"):
        J.JudgePrompt("s", "no placeholder")


def test_judged_rows_fix_the_types_row_maps_infer():
    rows = caption_rows(["A red car."]).to_pylist()
    row = J.VllmVerdict("keep")(dict(rows[0], generated_text="Yes"))
    inferred = pa.Table.from_pylist([row])  # as a row-wise map builds a block: reason and detail all null
    assert inferred.schema.field(S.REASON).type == pa.null()
    fixed = J.judged_rows(inferred)
    assert fixed.schema == J.JUDGED_ROW and fixed.column(S.VERDICT).to_pylist() == ["yes"]


# A short prompt, so that a prompt over max_input_tokens is easy to build with the tiny word-level tokenizer.
SHORT_SYSTEM, SHORT_USER = "Answer yes or no.", "Caption: {caption}\nIs it a good image prompt? Answer yes or no."
LONG_CAPTION = "A red dog on the street near a golden lake with soft warm light"
# The chat template's tokens around the caption, written out by hand (the tokenizer lower-cases words).
HEAD = ["<|system|>", "answer", "yes", "or", "no", ".", "<|user|>", "caption", ":"]
TAIL = ["is", "it", "a", "good", "image", "prompt", "?", "answer", "yes", "or", "no", ".", "<|assistant|>"]


def test_hf_judge_cuts_the_caption_never_the_instructions(tmp_path):
    from transformers import AutoTokenizer

    from tests.fixtures.tiny_lm import save_tiny_causal_lm

    path = str(save_tiny_causal_lm(tmp_path / "lm", f"{SHORT_SYSTEM} {SHORT_USER} {LONG_CAPTION}"))
    tok = AutoTokenizer.from_pretrained(path)
    limit = len(HEAD) + 5 + len(TAIL)  # room for five caption words
    judge = hf_judge(path, SHORT_SYSTEM, SHORT_USER, max_input_tokens=limit, max_new_tokens=2)
    full = judge.prompt_text(LONG_CAPTION)
    # Truncating the whole prompt (what the tokenizer's truncation does) loses the question and the generation prompt.
    plain = tok(full, truncation=True, max_length=limit, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(plain)[-1] != "<|assistant|>"
    assert tok.convert_ids_to_tokens(judge.input_ids(LONG_CAPTION)) == HEAD + ["a", "red", "dog", "on", "the"] + TAIL
    assert tok.convert_ids_to_tokens(judge.input_ids("A red car")) == HEAD + ["a", "red", "car"] + TAIL  # short: untouched
    # Through generate too: a batch of a cut and an uncut caption, left-padded to the cut one's length.
    batch = judge.batch_inputs([LONG_CAPTION, "A red car"])
    assert batch["input_ids"].shape == (2, limit) and batch["attention_mask"][1].tolist() == [0] * 2 + [1] * (limit - 2)
    out = judge(caption_rows([LONG_CAPTION, "A red car"]))
    assert all(isinstance(a, str) for a in out.column(S.ANSWER).to_pylist())
    with pytest.raises(ValueError, match=f"curate.llm.max_input_tokens={len(HEAD) + len(TAIL)} leaves no room"):
        hf_judge(path, SHORT_SYSTEM, SHORT_USER, max_input_tokens=len(HEAD) + len(TAIL))


def test_hf_judge_sees_only_the_kept_part_of_a_cut_caption(tmp_path):
    """The keyword LM answers No for 'cat': a cat cut off the caption's end no longer counts."""
    from tests.fixtures.tiny_lm import save_keyword_judge_lm

    caption = "A red car on the street near a golden lake with soft warm light and a cat"
    path = str(save_keyword_judge_lm(tmp_path / "kw", extra_text=f"{SHORT_SYSTEM} {SHORT_USER} {caption}"))
    roomy = hf_judge(path, SHORT_SYSTEM, SHORT_USER, max_input_tokens=512)
    tight = hf_judge(path, SHORT_SYSTEM, SHORT_USER, max_input_tokens=len(HEAD) + 5 + len(TAIL))
    assert roomy(caption_rows([caption])).column(S.VERDICT).to_pylist() == ["no"]
    assert tight(caption_rows([caption, "A cat on a red car"])).column(S.VERDICT).to_pylist() == ["yes", "no"]


def test_hf_judge_device_and_dtype_settings(tmp_path, monkeypatch):
    import torch

    from tests.fixtures.tiny_lm import save_tiny_causal_lm

    path = str(save_tiny_causal_lm(tmp_path / "lm", f"{SHORT_SYSTEM} {SHORT_USER}"))
    # The aliases the synth stage takes (model.dtype) work here too.
    judge = hf_judge(path, SHORT_SYSTEM, SHORT_USER, dtype="bf16")
    assert next(judge.lm.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"curate.llm.dtype='float8': expected one of bf16, bfloat16, float16"):
        hf_judge(path, SHORT_SYSTEM, SHORT_USER, dtype="float8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="^curate.llm.device=cuda:1 but this worker sees no CUDA device$"):
        hf_judge(path, SHORT_SYSTEM, SHORT_USER, device="cuda:1")
