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
