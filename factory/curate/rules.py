"""Rule-based caption curation, with Data-Juicer's definitions and SynthVLM's thresholds."""
from __future__ import annotations

import math
import string
import unicodedata
from collections import Counter

import pyarrow as pa

from factory import schema as S

# Data-Juicer counts whitespace, digits, punctuation and emoji as special characters.
_SPECIAL = set(string.punctuation + string.digits + string.whitespace) | set("◆●■►▼▲▴∆▻▷❖♡□“”‘’–—…«»、。，！？；：")
_EMOJI_RANGES = ((0x1F000, 0x1FAFF), (0x2600, 0x27BF), (0x2300, 0x23FF), (0x2B00, 0x2BFF), (0xFE00, 0xFE0F), (0x200D, 0x200D))


def _is_special(c: str) -> bool:
    if c in _SPECIAL:
        return True
    o = ord(c)
    if o < 0x2000:
        return False
    return any(a <= o <= b for a, b in _EMOJI_RANGES) or unicodedata.category(c) == "So"


_DELETE_SPECIAL = {ord(c): None for c in _SPECIAL}


def alnum_ratio(text: str) -> float:
    return sum(map(str.isalnum, text)) / len(text) if text else 0.0


def special_ratio(text: str) -> float:
    """Same count as `_is_special` per character; str.translate deletes the listed ones in C."""
    if not text:
        return 0.0
    rest = text.translate(_DELETE_SPECIAL)
    n = len(text) - len(rest)
    if not rest.isascii():  # emoji and other symbols: only the rare non-ASCII characters go through Python
        n += sum(1 for c in rest if ord(c) >= 0x2000 and _is_special(c))
    return n / len(text)


def char_rep_ratio(text: str, n: int = 10) -> float:
    """Data-Juicer's character_repetition_filter: top-r n-gram counts over all, r ≤ sqrt(distinct)."""
    counts = Counter(text[i : i + n] for i in range(len(text) - n + 1))
    if not counts:
        return 0.0
    freqs = sorted(counts.values(), reverse=True)
    repeated = sum(1 for f in freqs if f > 1)
    r = min(int(math.sqrt(len(freqs))), repeated)
    return sum(freqs[:r]) / sum(freqs)


_STRIP = "".join(sorted(c for c in _SPECIAL if not c.isspace()))


def words_of(text: str) -> list[str]:
    """Data-Juicer's word refinement: lower case, special characters stripped, empties dropped."""
    words = (w.strip(_STRIP) for w in text.lower().split())
    return [w for w in words if w]


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


class CaptionRules:
    """Marks captions that fail a rule with the rule's name as `reason`; rows already rejected pass untouched."""

    def __init__(
        self,
        enabled: bool = True,
        min_chars: int = 10,
        max_chars: int = 1000,
        alnum_min: float | None = 0.60,
        char_rep_max: float | None = 0.0937,
        word_rep_max: float | None = 0.0309,
        special_min: float | None = 0.165,
        special_max: float | None = 0.420,
        rep_len: int = 10,
        flagged_words: list[str] | None = None,
        flagged_max: float | None = 0.0,
        perplexity: dict | None = None,  # curate.rules.perplexity: a model stage of its own (curate/perplexity.py)
    ):
        self.enabled = enabled
        self.min_chars, self.max_chars = min_chars, max_chars
        self.alnum_min, self.char_rep_max, self.word_rep_max = alnum_min, char_rep_max, word_rep_max
        self.special_min, self.special_max, self.rep_len = special_min, special_max, rep_len
        # Refined as caption words are (lower case, special characters stripped), so "Gore!" matches "gore".
        self.flagged = frozenset(flagged_word(w) for w in flagged_words or [])
        self.flagged_max = flagged_max

    def check(self, caption: str) -> tuple[str, str] | None:
        """(reason, detail) of the first rule the caption fails, or None."""
        n = len(caption)
        if self.min_chars is not None and n < self.min_chars:
            return "too_short", f"{n} < {self.min_chars} chars"
        if self.max_chars is not None and n > self.max_chars:
            return "too_long", f"{n} > {self.max_chars} chars"
        if self.alnum_min is not None and (v := alnum_ratio(caption)) < self.alnum_min:
            return "alnum_ratio", f"{v:.4f} < {self.alnum_min}"
        if self.special_min is not None or self.special_max is not None:
            v = special_ratio(caption)
            if self.special_min is not None and v < self.special_min:
                return "special_ratio", f"{v:.4f} < {self.special_min}"
            if self.special_max is not None and v > self.special_max:
                return "special_ratio", f"{v:.4f} > {self.special_max}"
        if self.char_rep_max is not None and (v := char_rep_ratio(caption, self.rep_len)) > self.char_rep_max:
            return "char_repetition", f"{v:.4f} > {self.char_rep_max}"
        if self.word_rep_max is not None and (v := word_rep_ratio(caption, self.rep_len)) > self.word_rep_max:
            return "word_repetition", f"{v:.4f} > {self.word_rep_max}"
        if self.flagged and self.flagged_max is not None:
            words = words_of(caption)
            hits = [w for w in words if w in self.flagged]
            if words and (v := len(hits) / len(words)) > self.flagged_max:
                return "flagged_words", f"{v:.4f} > {self.flagged_max} ({hits[0]})"
        return None

    def __call__(self, batch: pa.Table) -> pa.Table:
        if not self.enabled or batch.num_rows == 0:
            return batch
        captions = batch.column(S.CAPTION).to_pylist()
        reasons = batch.column(S.REASON).to_pylist()
        details = batch.column(S.DETAIL).to_pylist()
        for i, (cap, reason) in enumerate(zip(captions, reasons)):
            if reason is None and (failed := self.check(cap)) is not None:
                reasons[i], details[i] = failed
        batch = batch.set_column(batch.schema.get_field_index(S.REASON), S.REASON, pa.array(reasons, pa.string()))
        return batch.set_column(batch.schema.get_field_index(S.DETAIL), S.DETAIL, pa.array(details, pa.string()))
