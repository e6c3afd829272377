"""Caption rules: Data-Juicer's definitions, checked on hand-countable strings."""
import pyarrow as pa

from factory import schema as S
from factory.curate.rules import CaptionRules, alnum_ratio, char_rep_ratio, special_ratio, word_rep_ratio


def test_ratios_by_hand():
    assert alnum_ratio("ab c!") == 3 / 5
    # whitespace, digits, punctuation and emoji are special
    assert special_ratio("a 1,b") == 3 / 5
    assert special_ratio("ok🙂") == 1 / 3
    # "abababababab": 10-grams "ababababab" ×2, "bababababa" ×1; r = min(floor(sqrt(2)), 1) = 1 → 2/3
    assert char_rep_ratio("abababababab", 10) == 2 / 3
    assert char_rep_ratio("abcdefghijkl", 10) == 0.0
    # 2-grams of "aaaa": {"aa": 3}: one distinct, floor(sqrt(1)) = 1 → 3/3
    assert char_rep_ratio("aaaa", 2) == 1.0
    # 'a b a b a' 2-grams: "a b" ×2, "b a" ×2 → all repeated
    assert word_rep_ratio("a b a b a", 2) == 1.0
    assert word_rep_ratio("A, b. c d", 2) == 0.0


def table(captions):
    n = len(captions)
    return pa.Table.from_pydict(
        {S.ID: [str(i) for i in range(n)], S.CAPTION: captions, S.SOURCE: ["f:1"] * n, S.POS: list(range(n)),
         S.RAW: captions, S.REASON: [None] * n, S.DETAIL: [None] * n},
        schema=S.CAPTION_ROW,
    )


def test_rules_mark_reasons_and_leave_good_rows():
    rules = CaptionRules()
    good = "A red vintage car parked in an autumn forest, with vivid saturated colors."
    spam = " ".join(["buy now"] * 20)
    out = rules(table([good, "cat", spam, "@@@ ### $$$ %%% ^^^ &&& *** !!!", "x" * 1200]))
    reasons = out.column(S.REASON).to_pylist()
    assert reasons[0] is None
    assert reasons[1] == "too_short"
    assert reasons[2] in ("char_repetition", "word_repetition")
    assert reasons[3] == "alnum_ratio"
    assert reasons[4] == "too_long"
    assert out.column(S.DETAIL).to_pylist()[1] == "3 < 10 chars"


def test_each_rule_can_be_switched_off():
    spam = " ".join(["buy now"] * 20)
    rules = CaptionRules(char_rep_max=None, word_rep_max=None)
    assert rules(table([spam])).column(S.REASON).to_pylist() == [None]
    assert CaptionRules(enabled=False)(table(["cat"])).column(S.REASON).to_pylist() == [None]


def test_rejected_rows_keep_their_first_reason():
    t = table(["cat"])
    t = t.set_column(t.schema.get_field_index(S.REASON), S.REASON, pa.array(["duplicate_id"]))
    assert CaptionRules()(t).column(S.REASON).to_pylist() == ["duplicate_id"]
