"""The CLI end to end with all curation on: flagged words, near duplicates, perplexity, the LLM judge, select.fraction."""
from __future__ import annotations

import json
import math

import pyarrow.parquet as pq

from conftest import CAPTIONS, factory_run, tiny_overrides, write_jsonl


def test_cli_with_all_curation_stages(tmp_path, ray_local):
    from factory.curate.perplexity import PerplexityFilter
    from tests.fixtures.tiny_lm import save_keyword_judge_lm, save_tiny_causal_lm

    rows = [{"id": i + 1, "caption": c} for i, c in enumerate(CAPTIONS)]
    rows += [
        {"id": 20, "caption": CAPTIONS[0].rsplit(" ", 1)[0]},  # near duplicate of id 1: its last word cut
        {"id": 21, "caption": "A nude figure standing on a rainy street in Tokyo, with soft light."},  # flagged
        {"id": 22, "caption": "A dog sleeping on a wooden pier at dusk, with pastel colors all around."},  # judge: 'maybe'
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    judge_lm = save_keyword_judge_lm(tmp_path / "judge")  # 'cat' -> No, 'dog' -> maybe, else Yes
    ppl_lm = save_tiny_causal_lm(tmp_path / "ppl", " ".join(CAPTIONS), seed=2)
    # The perplexity limit: just below the highest perplexity among the captions that reach the filter.
    reach = {r["id"]: r["caption"] for r in rows if r["id"] not in (20, 21)}
    ppl = dict(zip(reach, PerplexityFilter(enabled=True, model=str(ppl_lm), max=1.0).loaded().perplexities(list(reach.values()))))
    worst = max(ppl, key=ppl.get)
    limit = (ppl[worst] + sorted(ppl.values())[-2]) / 2

    out = tmp_path / "run"
    overrides = tiny_overrides(out, src, "select.k=null", "select.fraction=0.5", "ray.address=local",
                               "curate.near_dup.enabled=true",
                               "curate.perplexity.enabled=true", f"curate.perplexity.model={ppl_lm}",
                               f"curate.perplexity.max={limit}",
                               "curate.llm.enabled=true", "curate.llm.backend=hf", f"curate.llm.model={judge_lm}",
                               "curate.llm.on_unparseable=reject", "curate.llm.batch_size=4")
    proc = factory_run(*overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]

    m = json.loads((out / "manifest.json").read_text())
    c = m["counts"]
    judged = {i: cap for i, cap in reach.items() if i != worst}
    expect_no = sum("cat" in cap.lower().split() for cap in judged.values())
    expect_unparseable = sum("dog" in cap.lower().split() for cap in judged.values())
    assert expect_no + expect_unparseable >= 1
    assert c["llm_judge"] == {"yes": len(judged) - expect_no - expect_unparseable, "no": expect_no, "unparseable": expect_unparseable}
    assert c["rejected_by_reason"] == {k: v for k, v in {
        "llm_judge": expect_no + expect_unparseable, "near_duplicate": 1, "flagged_words": 1, "perplexity": 1}.items() if v}
    assert c["read"] == len(rows) and c["rejected"] == sum(c["rejected_by_reason"].values())
    assert c["curated"] == c["read"] - c["rejected"] == c["llm_judge"]["yes"] == c["synthesized"]

    rejects = pq.read_table(out / "rejects").to_pylist()
    by_id = {r["id"]: r for r in rejects}
    assert by_id["20"]["reason"] == "near_duplicate" and by_id["20"]["detail"] == "near duplicate of id 1"
    assert by_id["21"]["reason"] == "flagged_words" and by_id[str(worst)]["reason"] == "perplexity"
    judge_rejects = [r for r in rejects if r["reason"] == "llm_judge"]
    assert len(judge_rejects) == expect_no + expect_unparseable
    assert all(r["detail"].startswith(("no: 'no", "unparseable: 'maybe")) for r in judge_rejects)
    verdicts = pq.read_table(out / "llm_judge").to_pylist()
    assert sorted(int(v["id"]) for v in verdicts) == sorted(judged)

    # The cost estimate counts the same rule failures and (near) duplicates, by the run's own code,
    # and says which model stages it leaves out.
    from factory.config import compose
    from factory.estimate import estimate
    from factory.job import load_job

    e = estimate(load_job(compose([o for o in overrides if not o.startswith("ray.")] + ["estimate.seconds_per_image=1"])))
    assert e["rules_failed"] == {"flagged_words": 1} and e["duplicates"] == {"near_duplicate": 1}
    assert e["curated"] == c["read"] - 2 == c["curated"] + c["rejected_by_reason"]["perplexity"] + c["rejected_by_reason"]["llm_judge"]
    assert e["curation_not_counted"] == ["perplexity", "llm_judge"]

    # select.fraction: exactly ceil(0.5 * competing) pairs, the best by score.
    sel = m["selection"]
    assert sel["competing_captions"] == c["scored"] == c["curated"]
    assert sel["k"] == c["selected"] == math.ceil(0.5 * sel["competing_captions"])
    dataset = pq.read_table(out / "dataset")
    assert dataset.num_rows == sel["k"]
    candidates = pq.read_table(out / "candidates", columns=["id", "score"]).sort_by([("score", "descending"), ("id", "ascending")])
    assert sorted(dataset.column("id").to_pylist()) == sorted(candidates.column("id").to_pylist()[: sel["k"]])

    # A resume that turns the model stages on: samples of captions they now reject stay on disk but
    # no longer count as resumed (nor compete); nothing is generated.
    out2 = tmp_path / "run2"
    plain = [o for o in overrides if not o.startswith(("curate.perplexity", "curate.llm"))]
    plain = [o.replace(f"output={out}", f"output={out2}") for o in plain]
    first = factory_run(*plain)
    assert first.returncode == 0, first.stderr[-3000:]
    on_disk = json.loads((out2 / "manifest.json").read_text())["counts"]["synthesized"]
    again = [o.replace(f"output={out}", f"output={out2}") for o in overrides]
    resumed = factory_run(*again)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    c2 = json.loads((out2 / "manifest.json").read_text())["counts"]
    assert c2["rejected_by_reason"] == c["rejected_by_reason"] and c2["generated"] == 0
    assert c2["resumed"] == c2["curated"] == c["curated"] < on_disk
    assert c2["not_competing"] == on_disk - c2["curated"]
    stages = {s["stage"]: s for s in json.loads((out2 / "manifest.json").read_text())["stages"]}
    assert stages["synthesize"]["rows_in"] == 0
