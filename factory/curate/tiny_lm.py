"""A tiny Llama-architecture causal LM with a word-level tokenizer, built offline.

What the tests (and a CPU demo) hand to the LLM judge and the perplexity filter: it is saved
with `save_pretrained` and read back through `AutoModelForCausalLM` / `AutoTokenizer`, the same
path a hub model takes. With random weights it answers garbage; `always_first_token=True` zeroes
the output layer, so greedy decoding always picks token 0, which is "yes".
"""
from __future__ import annotations

import re
from pathlib import Path

# A chat template in the usual shape, so the judge's chat path is exercised as with real models.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
BASE_WORDS = (
    "yes no maybe the a an of and with in on at is are this that it caption image photo prompt "
    "red blue green golden warm soft light dog cat car street lake sky tree house boat people "
    "a good bad because not , . ! ? : ; ' \""
)


def build_tokenizer(extra_text: str = ""):
    """A lower-casing word-level fast tokenizer whose first token is 'yes' (id 0)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = []
    for w in (BASE_WORDS + " " + extra_text).lower().split():
        for piece in re.findall(r"\w+|[^\w\s]", w):
            if piece not in words:
                words.append(piece)
    vocab = {w: i for i, w in enumerate(words)}
    for s in SPECIALS:
        vocab[s] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=SPECIALS[4:],
        chat_template=CHAT_TEMPLATE,
    )


def save_tiny_causal_lm(folder: str | Path, extra_text: str = "", seed: int = 0, always_first_token: bool = False) -> Path:
    """Build and `save_pretrained` the tiny LM and its tokenizer into `folder`; returns it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    tokenizer = build_tokenizer(extra_text)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if always_first_token:
        with torch.no_grad():
            model.lm_head.weight.zero_()  # every logit equal: greedy argmax is token 0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_keyword_judge_lm(folder: str | Path, no_word: str = "cat", unsure_word: str = "dog", extra_text: str = "") -> Path:
    """A tiny Llama set by hand so that its greedy answer depends on the caption:
    "no" when the prompt holds `no_word`, "maybe" (unparseable) when it holds `unsure_word`, else "yes".

    How: queries and keys are zero, so the last position attends uniformly to all tokens;
    the value path carries only two embedding dimensions (one per keyword) and every token has a
    constant third one. The output layer reads yes from the constant, no and maybe from the
    keyword dimensions, whose averaged signal is scaled up to win whenever a keyword is present.
    The MLPs are zero. A judge test can then check real verdicts through the real generate path.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    tokenizer = build_tokenizer(f"{extra_text} {no_word} {unsure_word}")
    vocab = tokenizer.get_vocab()
    hidden = 32
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    no_dim, const_dim, unsure_dim = 0, 1, 2
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for norm in (model.model.layers[0].input_layernorm, model.model.layers[0].post_attention_layernorm, model.model.norm):
            norm.weight.fill_(1.0)
        emb = model.model.embed_tokens.weight
        emb[:, const_dim] = 1.0
        emb[vocab[no_word], no_dim] = 1.0
        emb[vocab[unsure_word], unsure_dim] = 1.0
        attn = model.model.layers[0].self_attn
        for d in (no_dim, unsure_dim):
            attn.v_proj.weight[d, d] = 100.0  # an averaged keyword signal, scaled up to beat the constant
            attn.o_proj.weight[d, d] = 1.0
        head = model.lm_head.weight
        head[vocab["yes"], const_dim] = 1.0
        head[vocab["no"], no_dim] = 1.0
        head[vocab["maybe"], unsure_dim] = 1.0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
