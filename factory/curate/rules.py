"""Rule-based caption curation, with Data-Juicer's definitions and SynthVLM's thresholds."""
from __future__ import annotations

import math
import string
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar, Optional

from factory import schema as S
from factory.checks import number
from factory.stage import CaptionFilter

# Data-Juicer's OTHER_SPECIAL_CHARACTERS (data_juicer/ops/common/special_characters.py), verbatim but
# for its leading run of Unicode spaces, whose code points the copy at hand did not show: written
# here as U+2000-U+200A, U+3000 and U+FFFC.
OTHER_SPECIAL_CHARACTERS = (
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u3000\ufffc"
    "’“”–ー一▬…✦�£•€«»°·═"
    "×士＾˘⇓↓↑←→（）§″′´¿−±∈¢ø‚„½¼¾¹²³―⁃，ˌ¸‹›ʺˈʻ¦‐⠀‰‑≤≥‖"
    "◆●■►▼▲▴∆▻¡★☆✱ːº。¯˜¥ɪ≈†上ン：∼⁄・♡✓⊕․．⋅÷１‟；،、¨ाাी्े◦˚"
    "゜ʼ≖ʼ¤ッツシ℃√！【】‿∞➤～πه۩☛₨➩☻๑٪♥ıॽ《‘©﴿٬？▷Г♫∟™ª₪®「—❖"
    "」﴾》"
)
# Data-Juicer adds every key of the `emoji` package's EMOJI_DATA, tested one character at a time, so
# only the single-code-point emoji count. `emoji` is no dependency here: below U+1F000 these are the
# Unicode Emoji=Yes code points (ASCII ones left out: they are punctuation or digits already);
# above, the whole of U+1F000-U+1FAFF stands in for them (a superset: it adds e.g. mahjong tiles).
EMOJI_RANGES = (
    (0x00A9, 0x00A9), (0x00AE, 0x00AE), (0x203C, 0x203C), (0x2049, 0x2049), (0x2122, 0x2122), (0x2139, 0x2139),
    (0x2194, 0x2199), (0x21A9, 0x21AA), (0x231A, 0x231B), (0x2328, 0x2328), (0x23CF, 0x23CF), (0x23E9, 0x23F3),
    (0x23F8, 0x23FA), (0x24C2, 0x24C2), (0x25AA, 0x25AB), (0x25B6, 0x25B6), (0x25C0, 0x25C0), (0x25FB, 0x25FE),
    (0x2600, 0x2604), (0x260E, 0x260E), (0x2611, 0x2611), (0x2614, 0x2615), (0x2618, 0x2618), (0x261D, 0x261D),
    (0x2620, 0x2620), (0x2622, 0x2623), (0x2626, 0x2626), (0x262A, 0x262A), (0x262E, 0x262F), (0x2638, 0x263A),
    (0x2640, 0x2640), (0x2642, 0x2642), (0x2648, 0x2653), (0x265F, 0x2660), (0x2663, 0x2663), (0x2665, 0x2666),
    (0x2668, 0x2668), (0x267B, 0x267B), (0x267E, 0x267F), (0x2692, 0x2697), (0x2699, 0x2699), (0x269B, 0x269C),
    (0x26A0, 0x26A1), (0x26A7, 0x26A7), (0x26AA, 0x26AB), (0x26B0, 0x26B1), (0x26BD, 0x26BE), (0x26C4, 0x26C5),
    (0x26C8, 0x26C8), (0x26CE, 0x26CF), (0x26D1, 0x26D1), (0x26D3, 0x26D4), (0x26E9, 0x26EA), (0x26F0, 0x26F5),
    (0x26F7, 0x26FA), (0x26FD, 0x26FD), (0x2702, 0x2702), (0x2705, 0x2705), (0x2708, 0x270D), (0x270F, 0x270F),
    (0x2712, 0x2712), (0x2714, 0x2714), (0x2716, 0x2716), (0x271D, 0x271D), (0x2721, 0x2721), (0x2728, 0x2728),
    (0x2733, 0x2734), (0x2744, 0x2744), (0x2747, 0x2747), (0x274C, 0x274C), (0x274E, 0x274E), (0x2753, 0x2755),
    (0x2757, 0x2757), (0x2763, 0x2764), (0x2795, 0x2797), (0x27A1, 0x27A1), (0x27B0, 0x27B0), (0x27BF, 0x27BF),
    (0x2934, 0x2935), (0x2B05, 0x2B07), (0x2B1B, 0x2B1C), (0x2B50, 0x2B50), (0x2B55, 0x2B55), (0x3030, 0x3030),
    (0x303D, 0x303D), (0x3297, 0x3297), (0x3299, 0x3299), (0x1F000, 0x1FAFF),
)
SPECIAL_CHARACTERS = frozenset(string.punctuation + string.digits + string.whitespace + OTHER_SPECIAL_CHARACTERS) | frozenset(
    chr(o) for a, b in EMOJI_RANGES for o in range(a, b + 1)
)


def _is_special(c: str) -> bool:
    """Data-Juicer's per-character test: `c in SPECIAL_CHARACTERS`."""
    return c in SPECIAL_CHARACTERS


# The whole set as a deletion table: str.translate does the per-character test in C.
_DELETE_SPECIAL = {ord(c): None for c in SPECIAL_CHARACTERS}


def alnum_ratio(text: str) -> float:
    return sum(map(str.isalnum, text)) / len(text) if text else 0.0


def special_ratio(text: str) -> float:
    """Share of characters in SPECIAL_CHARACTERS: the ones str.translate deletes."""
    return (len(text) - len(text.translate(_DELETE_SPECIAL))) / len(text) if text else 0.0


def char_rep_ratio(text: str, n: int = 10) -> float:
    """Data-Juicer's character_repetition_filter: top-r n-gram counts over all, r ≤ sqrt(distinct)."""
    counts = Counter(text[i : i + n] for i in range(len(text) - n + 1))
    if not counts:
        return 0.0
    freqs = sorted(counts.values(), reverse=True)
    repeated = sum(1 for f in freqs if f > 1)
    r = min(int(math.sqrt(len(freqs))), repeated)
    return sum(freqs[:r]) / sum(freqs)


def _strip_special(word: str) -> str:
    """Data-Juicer's `strip(word, SPECIAL_CHARACTERS)`; str.strip would scan the 3,000-character set per test."""
    i, j = 0, len(word)
    while i < j and word[i] in SPECIAL_CHARACTERS:
        i += 1
    while j > i and word[j - 1] in SPECIAL_CHARACTERS:
        j -= 1
    return word[i:j]


def words_of(text: str) -> list[str]:
    """Data-Juicer's word refinement: lower case, SPECIAL_CHARACTERS stripped from both ends, empties dropped."""
    words = []
    for w in text.lower().split():
        if w[0] in SPECIAL_CHARACTERS or w[-1] in SPECIAL_CHARACTERS:  # most words need no stripping
            w = _strip_special(w)
        if w:
            words.append(w)
    return words


def word_rep_ratio(text: str, n: int = 10) -> float:
    """Data-Juicer's word_repetition_filter: counts of n-grams seen more than once, over all."""
    words = words_of(text)
    counts = Counter(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
    total = sum(counts.values())
    return sum(f for f in counts.values() if f > 1) / total if total else 0.0


def flagged_word(entry: str) -> str:
    """A word-list entry as captions' words are compared to it; one word per entry."""
    words = words_of(str(entry))
    if len(words) != 1:
        raise ValueError(f"curate.rules.flagged_words: {entry!r} is not one word; list single words")
    return words[0]


@dataclass
class CaptionRules(CaptionFilter):
    """Caption filter: the first rule a caption fails, with the measured value (Data-Juicer's rules,
    SynthVLM's thresholds). Cheap, so it runs in the pre-pass too (before_dedup)."""

    config_name: ClassVar[str] = "rules"
    name: ClassVar[str] = "rules"
    before_dedup: ClassVar[bool] = True
    reasons: ClassVar[tuple[str, ...]] = (S.R_TOO_SHORT, S.R_TOO_LONG, S.R_ALNUM, S.R_SPECIAL, S.R_CHAR_REP, S.R_WORD_REP, S.R_FLAGGED)

    min_chars: Optional[int] = 10
    max_chars: Optional[int] = 1000
    alnum_min: Optional[float] = 0.60
    char_rep_max: Optional[float] = 0.0937
    word_rep_max: Optional[float] = 0.0309
    special_min: Optional[float] = 0.165
    special_max: Optional[float] = 0.420
    rep_len: int = 10
    flagged_words: list[str] = field(default_factory=list)  # conf/curate/flagged_words.yaml
    flagged_max: Optional[float] = 0.0  # reject when flagged words / words exceeds this

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("min_chars", "max_chars"):
            number(key, getattr(self, key), whole=True, low=0, nullable=True)
        for key in ("alnum_min", "char_rep_max", "word_rep_max", "special_min", "special_max", "flagged_max"):
            number(key, getattr(self, key), nullable=True)
        number("rep_len", self.rep_len, whole=True, low=1)
        # Refined as caption words are (lower case, special characters stripped), so "Gore!" matches "gore".
        self.flagged = frozenset(flagged_word(w) for w in self.flagged_words or [])

    def check(self, caption: str) -> tuple[str, str] | None:
        """(reason, detail) of the first rule the caption fails, or None."""
        n = len(caption)
        if self.min_chars is not None and n < self.min_chars:
            return S.R_TOO_SHORT, f"{n} < {self.min_chars} chars"
        if self.max_chars is not None and n > self.max_chars:
            return S.R_TOO_LONG, f"{n} > {self.max_chars} chars"
        if self.alnum_min is not None and (v := alnum_ratio(caption)) < self.alnum_min:
            return S.R_ALNUM, f"{v:.4f} < {self.alnum_min}"
        if self.special_min is not None or self.special_max is not None:
            v = special_ratio(caption)
            if self.special_min is not None and v < self.special_min:
                return S.R_SPECIAL, f"{v:.4f} < {self.special_min}"
            if self.special_max is not None and v > self.special_max:
                return S.R_SPECIAL, f"{v:.4f} > {self.special_max}"
        if self.char_rep_max is not None and (v := char_rep_ratio(caption, self.rep_len)) > self.char_rep_max:
            return S.R_CHAR_REP, f"{v:.4f} > {self.char_rep_max}"
        if self.word_rep_max is not None and (v := word_rep_ratio(caption, self.rep_len)) > self.word_rep_max:
            return S.R_WORD_REP, f"{v:.4f} > {self.word_rep_max}"
        if self.flagged and self.flagged_max is not None:
            words = words_of(caption)
            hits = [w for w in words if w in self.flagged]
            if words and (v := len(hits) / len(words)) > self.flagged_max:
                return S.R_FLAGGED, f"{v:.4f} > {self.flagged_max} ({hits[0]})"
        return None

    def judge(self, captions: list[str]) -> list[tuple[str, str] | None]:
        return [self.check(c) for c in captions]
