"""Byte-level BPE trained on a corpus, saved as tiktoken ranks and encoded through tiktoken.

Training uses Hugging Face `tokenizers` (Rust BpeTrainer, GPT-2 pre-tokenizer regex).
Its byte-level vocabulary spells bytes as printable stand-in characters (GPT-2's
bytes_to_unicode); we map them back to raw bytes and give ranks in merge order after the
256 single bytes, which is what tiktoken's rank-ordered merging needs to reproduce the
trained merges. `<|endoftext|>` takes the id after the last rank.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable

from gptbench.errors import UserError
from gptbench.tokenizers.tiktoken_bpe import ENDOFTEXT, GPT2_PAT_STR, TiktokenTokenizer

MIN_VOCAB = 256 + 1  # every byte + <|endoftext|>
MAX_VOCAB = 1 << 20


class BPETokenizer(TiktokenTokenizer):
    kind = "bpe"

    @property
    def spec(self) -> str:
        return f"bpe:{self.vocab_size}"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (used by HF ByteLevel)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def check_vocab_size(vocab_size: int) -> None:
    if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB:
        raise UserError(
            f"BPE vocabulary size {vocab_size} is too small: it needs at least {MIN_VOCAB} "
            f"(256 bytes + {ENDOFTEXT}); pass e.g. bpe:4096"
        )
    if vocab_size > MAX_VOCAB:
        raise UserError(f"BPE vocabulary size {vocab_size} is too large (max {MAX_VOCAB}); pass e.g. bpe:32768")


def hf_merges_to_ranks(merges: Iterable[Any]) -> dict[bytes, int]:
    """Ranks from an HF byte-level merge list: bytes 0..255, then each new token in merge order."""
    u2b = {c: b for b, c in bytes_to_unicode().items()}
    ranks: dict[bytes, int] = {bytes([b]): b for b in range(256)}
    for merge in merges:
        a, b = merge if isinstance(merge, (list, tuple)) else merge.split(" ", 1)
        try:
            tok = bytes(u2b[c] for c in a + b)
        except KeyError:
            raise UserError("the trained vocabulary is not byte-level; this is a bug in gptbench") from None
        if tok not in ranks:  # a second merge spelling an existing token adds nothing
            ranks[tok] = len(ranks)
    return ranks


def train_hf_bpe(texts: Iterable[str], vocab_size: int, *, length: int | None = None):
    """Train and return the Hugging Face tokenizer (ByteLevel BPE, GPT-2 regex)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[ENDOFTEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer, length=length)
    return tok


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    *,
    progress: Callable[[str], None] | None = None,
) -> BPETokenizer:
    """Train a byte-level BPE with `vocab_size` ids in all (fewer if the corpus runs out of pairs)."""
    check_vocab_size(vocab_size)
    if progress:
        progress(f"training byte-level BPE, vocabulary {vocab_size}")
    hf = train_hf_bpe(texts, vocab_size)
    merges = json.loads(hf.to_str())["model"]["merges"]
    ranks = hf_merges_to_ranks(merges)
    return BPETokenizer(ranks, name=f"gptbench-bpe-{len(ranks) + 1}", pat_str=GPT2_PAT_STR)
