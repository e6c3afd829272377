"""T5 and Gemma tokenizers trained offline on the bundled captions, in the layout the real ones have.

The real pipelines load `T5TokenizerFast` (SD3, FLUX), `T5Tokenizer` (PixArt-Σ) and
`GemmaTokenizerFast` (SANA) from a `tokenizer*/` folder. Nothing can be downloaded here, so these
are trained with the `tokenizers` package on factory/data/sample_captions.jsonl: a Unigram model
for T5 (<pad>=0, </s>=1, <unk>=2, then the pieces, then <extra_id_99>…<extra_id_0> as in T5's
sentencepiece vocabulary) and a byte-fallback BPE for Gemma (<pad>=0, <eos>=1, <bos>=2, <unk>=3,
<mask>=4, the 256 byte tokens <0x00>…<0xFF>, then the pieces). In transformers 5 the slow and fast
class names are one class backed by tokenizer.json, so no sentencepiece model file is needed.
The vocabularies are small (a few hundred pieces): a text encoder built for one takes
`len(tokenizer)` as its vocab_size.
"""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import GemmaTokenizer, T5Tokenizer

from factory.cache import save_once, tiny_cache_dir

CAPTIONS_FILE = Path(__file__).resolve().parent.parent / "data" / "sample_captions.jsonl"
T5_SPECIALS = ["<pad>", "</s>", "<unk>"]
T5_EXTRA_IDS = 100
GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


def training_text() -> list[str]:
    """The bundled captions that are strings (the sample holds a few bad rows on purpose)."""
    out = []
    for line in CAPTIONS_FILE.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("caption"), str) and row["caption"].strip():
            out.append(row["caption"])
    return out


def train_t5_vocab(vocab_size: int = 600) -> list[tuple[str, float]]:
    """(piece, log-probability) pairs of a Unigram model trained on the captions, T5's specials first."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=T5_SPECIALS, unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator(training_text(), trainer)
    vocab = [(piece, float(score)) for piece, score in json.loads(tok.to_str())["model"]["vocab"]]
    assert [p for p, _ in vocab[:3]] == T5_SPECIALS, vocab[:3]
    # The trainer's parallel EM leaves the scores ~1e-15 apart from run to run, which can swap two
    # pieces' ids: rounded and ordered by (score, piece), every node builds the same vocabulary.
    pieces = sorted(((p, round(s, 6)) for p, s in vocab[3:]), key=lambda ps: (-ps[1], ps[0]))
    vocab = vocab[:3] + pieces
    # T5's sentencepiece vocabulary ends with the sentinels, highest id first: <extra_id_0> is last.
    return vocab + [(f"<extra_id_{i}>", 0.0) for i in range(T5_EXTRA_IDS - 1, -1, -1)]


def train_gemma_bpe(vocab_size: int = 800) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges of a BPE trained on the captions with spaces as '▁' (Gemma's scheme)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=GEMMA_SPECIALS + BYTE_TOKENS,
                                  show_progress=False)
    tok.train_from_iterator(training_text(), trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = model["vocab"]
    order = GEMMA_SPECIALS + BYTE_TOKENS
    assert [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])][: len(order)] == order
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return vocab, merges


def _tokenizer_folder(name: str, folder: str | Path | None) -> Path:
    return Path(folder) if folder else tiny_cache_dir() / name


def t5_tokenizer(folder: str | Path | None = None, model_max_length: int = 512):
    """T5's tokenizer (Unigram, T5's special tokens and 100 sentinels), saved once, loaded back."""

    folder = _tokenizer_folder("t5-tokenizer", folder)

    def save(tmp: Path) -> None:
        tok = T5Tokenizer(vocab=train_t5_vocab(), extra_ids=T5_EXTRA_IDS, model_max_length=model_max_length)
        tok.save_pretrained(str(tmp))

    save_once(folder, save)
    return T5Tokenizer.from_pretrained(str(folder))


def gemma_tokenizer(folder: str | Path | None = None, model_max_length: int = 8192):
    """Gemma's tokenizer (byte-fallback BPE, <bos> added in front), saved once, loaded back."""

    folder = _tokenizer_folder("gemma-tokenizer", folder)

    def save(tmp: Path) -> None:
        vocab, merges = train_gemma_bpe()
        tok = GemmaTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length, add_bos_token=True,
                             add_eos_token=False)  # as Gemma's tokenizer_config.json
        tok.save_pretrained(str(tmp))

    save_once(folder, save)
    return GemmaTokenizer.from_pretrained(str(folder))
