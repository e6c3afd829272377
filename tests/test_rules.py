"""Caption rules: Data-Juicer's definitions, checked on hand-countable strings."""
import string

import pyarrow as pa
import pytest

from factory import schema as S
from factory.curate.rules import CaptionRules, alnum_ratio, char_rep_ratio, special_ratio, word_rep_ratio, words_of


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
    assert reasons[2] == S.R_CHAR_REP  # the first failed rule names it (its word repetition is 1.0 too)
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


# Data-Juicer's OTHER_SPECIAL_CHARACTERS (data_juicer/ops/common/special_characters.py), copied here
# on its own from that file (its leading Unicode spaces left out): the reference the counts below use.
DJ_OTHER = (
    "’“”–ー一▬…✦�£•€«»°·═"
    "×士＾˘⇓↓↑←→（）§″′´¿−±∈¢ø‚„½¼¾¹²³―⁃，ˌ¸‹›ʺˈʻ¦‐⠀‰‑≤≥‖"
    "◆●■►▼▲▴∆▻¡★☆✱ːº。¯˜¥ɪ≈†上ン：∼⁄・♡✓⊕․．⋅÷１‟；،、¨ाাी्े◦˚"
    "゜ʼ≖ʼ¤ッツシ℃√！【】‿∞➤～πه۩☛₨➩☻๑٪♥ıॽ《‘©﴿٬？▷Г♫∟™ª₪®「—❖"
    "」﴾》"
)
DJ_SPECIAL = set(string.punctuation + string.digits + string.whitespace + DJ_OTHER)


def test_data_juicer_special_characters_count():
    # Below U+2000 and missed before: each now special, alone or beside a letter.
    for c in "°©®£×½•€«»·§¿±¢¹²³¦¡º¯¥¤ªπøıГ":
        assert special_ratio(c) == 1.0 and special_ratio("a" + c) == 0.5, c
    assert special_ratio("\u3000\ufffc\u2009") == 1.0
    # 12 of " • ", 4 digits and "©": 17 of 34 characters, as Data-Juicer counts them.
    assert special_ratio("Summer • Beach • Sunset • 2019 • ©") == 0.5
    caption = "Café «Le Rêve» — 3½ km from the beach, 25°C, ★★★, ©2019 Jörg™ · 北京。Ünïcödé ∑ é □"
    assert special_ratio(caption) == sum(c in DJ_SPECIAL for c in caption) / len(caption)
    # Not in Data-Juicer's set: letters with accents, CJK, other math symbols and shapes.
    assert special_ratio("éüñ北京∑□") == 0.0


def test_single_code_point_emoji_are_special():
    """Below U+1F000 the table is Unicode's Emoji property, as the `regex` module (not ours) knows it."""
    regex = pytest.importorskip("regex")
    emoji = regex.compile(r"\p{Emoji}")
    bmp = [chr(o) for o in range(0x80, 0x1F000) if emoji.match(chr(o))]
    assert len(bmp) > 150 and all(special_ratio(c) == 1.0 for c in bmp)
    # Nothing else in that range counts but Data-Juicer's own list.
    extra = {chr(o) for o in range(0x80, 0x1F000) if special_ratio(chr(o)) == 1.0} - set(bmp) - DJ_SPECIAL
    assert extra <= {chr(o) for o in range(0x2000, 0x200B)} | {"\u3000", "\ufffc"}  # the spaces the copy above leaves out
    assert all(special_ratio(chr(o)) == 1.0 for o in range(0x1F000, 0x110000) if emoji.match(chr(o)))
    assert special_ratio("ok🙂👍🏽") == 3 / 5  # the skin-tone modifier is a code point of its own


def test_words_are_stripped_of_data_juicer_special_characters():
    # Data-Juicer's words_refinement: strip(word, SPECIAL_CHARACTERS), then empties dropped.
    assert words_of("«Bonjour» ©2019 ★star★ 😀 —x— café") == ["bonjour", "star", "x", "café"]
