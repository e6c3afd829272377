"""Exact dedup: the first row in input order wins, whatever order the keys arrive in."""
import pyarrow as pa

from factory import schema as S
from factory.curate.dedup import MarkRejected, dedup_keys, find_duplicates, normalize_caption
from tests.test_rules import table


def test_normalization():
    assert normalize_caption("  A  Red\tCar ") == normalize_caption("a red car")
    assert normalize_caption("ﬁsh") == "fish"  # NFKC


def test_duplicates_ids_and_captions():
    t = table(["A red car.", "a  red CAR.", "A blue car.", "A green car."])
    ids = ["1", "2", "3", "1"]
    t = t.set_column(0, S.ID, pa.array(ids))
    keys = dedup_keys(t)
    shuffled = keys.take(pa.array([3, 1, 0, 2]))
    lost = find_duplicates(shuffled).sort_by(S.POS).to_pylist()
    assert [(r[S.POS], r[S.REASON]) for r in lost] == [(1, S.R_DUP_CAPTION), (3, S.R_DUP_ID)]
    assert lost[0][S.DETAIL] == "duplicate of id 1"
    marked = MarkRejected(find_duplicates(keys))(t)
    assert marked.column(S.REASON).to_pylist() == [None, S.R_DUP_CAPTION, None, S.R_DUP_ID]


def test_a_caption_the_rules_reject_never_wins_a_duplicate_group(tmp_path):
    """Id 1 carries a flagged word and id 2 is the same caption without it (near duplicates); the
    first row of id 5 is too short and the second is fine: the good rows must survive the pre-pass."""
    from conftest import write_jsonl

    from factory.config import compose
    from factory.curate.near_dup import find_near_duplicates
    from factory.io.read import read_caption_file
    from factory.job import load_job
    from factory.prepass import ScanKeys, from_ipc, run_prepass

    rows = [
        {"id": 1, "caption": "A photo of a red car parked on a quiet street at night nsfw"},
        {"id": 2, "caption": "A photo of a red car parked on a quiet street at night"},
        {"id": 5, "caption": "tiny"},
        {"id": 5, "caption": "A wooden sailboat reflected in a calm harbor at dusk."},
        {"id": 6, "caption": "A wooden sailboat reflected in a calm harbor at dusk."},  # a true duplicate
    ]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    p = load_job(compose([f"input={path}", "curate.near_dup.enabled=true"])).pipeline
    pre = run_prepass([str(path)], p, 0.25, 16)
    rejected, n_read, kept = pre.losers_table(), pre.n_read, pre.kept_table()
    assert n_read == 5 and sorted(kept.column(S.ID).to_pylist()) == ["2", "5"]  # ids 2 and 5 (its second row) go on to synthesis
    lost = {r[S.POS]: (r[S.REASON], r[S.DETAIL]) for r in rejected.to_pylist()}
    # Only id 6 loses, to the second row of id 5 (pos 3): the rule-rejected rows competed for nothing.
    assert set(lost) == {4} and lost[4] == (S.R_DUP_CAPTION, "duplicate of id 5")
    # Without the rules in the pre-pass every row competes, and the flagged caption knocks out its clean twin.
    block = ScanKeys(dedup=p.deduplicators())(read_caption_file(str(path), 0))
    keys = from_ipc(block.column("ipc")[0].as_py())
    assert keys.num_rows == 5
    assert 1 in find_near_duplicates(keys, 0.8, 16).column(S.POS).to_pylist()
