"""The LLM judge's vllm backend: vLLM engines through Ray Data's LLM API (the `llm` extra)."""
from __future__ import annotations

from factory.curate.judge import (
    LLMJudge,
    VllmRequest,
    VllmVerdict,
    judged_rows,
    vllm_processor_kwargs,
)


def apply(ds, judge: LLMJudge):
    """`ds` judged by vLLM engines; ray.data.llm is imported only here (it needs vllm installed)."""
    from ray.data.llm import (  # optional: GPU machines only
        build_processor,
        vLLMEngineProcessorConfig,
    )

    processor = build_processor(
        vLLMEngineProcessorConfig(**vllm_processor_kwargs(judge)),
        preprocess=VllmRequest(judge.prompt.get("system"), judge.prompt.get("user", ""), judge.max_new_tokens),
        postprocess=VllmVerdict(judge.on_unparseable),
    )
    return processor(ds).map_batches(judged_rows, batch_size=1024, batch_format="pyarrow", num_cpus=0.1)
