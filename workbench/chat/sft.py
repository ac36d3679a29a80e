"""Supervised fine-tuning data: conversations as padded rows with masked targets.

Padding, not packing: each row of `block_size + 1` tokens holds one conversation (cut at
the block size) followed by `<|end|>` padding whose targets are -1, the ignored index of
both backends' loss. With one conversation per row, plain causal attention never crosses a
conversation boundary, on torch and MLX alike, with no attention mask (which would cost
torch its fused attention kernels and MLX a mask per batch); the price is the compute
spent on padding, which a batch of similar lengths keeps small. Targets other than the
assistant's tokens and its `<|end|>` are -1 as well (`--train-on-prompt`: all are trained).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from gptbench.chat.records import ChatCorpus, Conversation, load_chat_corpus
from gptbench.errors import UserError
from gptbench.tokenizers.base import Tokenizer
from gptbench.tokenizers.chat import ChatTokenizer, with_chat_tokens


@dataclass
class Conversations:
    """One split: `ids` int64 [N, T+1] (padded), `targets` int64 [N, T] (-1 = not trained)."""

    ids: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        """Trained target tokens (the unit of the split's loss)."""
        return int((self.targets >= 0).sum())

    def trained_ids(self) -> np.ndarray:
        return self.targets[self.targets >= 0]

    def sample_rows(self, batch_size: int, block_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """`batch_size` random conversations: x [B, T] and their masked targets y [B, T]."""
        rows = rng.integers(0, len(self.ids), size=batch_size)
        return np.ascontiguousarray(self.ids[rows, :block_size]), np.ascontiguousarray(self.targets[rows, :block_size])

    def skip_rows(self, batch_size: int, block_size: int, rng: np.random.Generator) -> None:
        rng.integers(0, len(self.ids), size=batch_size)


@dataclass
class SFTData:
    """What `prepare_data` gives a plain run, for a chat run (same attribute names)."""

    train: Conversations
    val: Conversations
    tokenizer: ChatTokenizer
    info: dict[str, Any]


def pack_rows(tokenizer: ChatTokenizer, convs: Sequence[Conversation], block_size: int,
              train_on_prompt: bool) -> tuple[Conversations, int, int, int]:
    """Padded rows of `convs`; returns (rows, conversations cut at the block size, conversations
    dropped because nothing trained was left within it, tokens kept in the rows)."""
    width = block_size + 1
    ids = np.full((len(convs), width), tokenizer.end_id, dtype=np.int64)
    targets = np.full((len(convs), block_size), -1, dtype=np.int64)
    truncated = dropped = kept = 0
    keep = np.ones(len(convs), dtype=bool)
    for i, conv in enumerate(convs):
        seq, trained = tokenizer.encode_conversation(conv, train_on_prompt=train_on_prompt)
        if len(seq) > width:
            truncated += 1
            seq, trained = seq[:width], trained[:width]
        if not trained[1:].any():
            keep[i], dropped = False, dropped + 1
            continue
        n = len(seq)
        kept += n
        ids[i, :n] = seq
        targets[i, : n - 1] = np.where(trained[1:], seq[1:], -1)
    return Conversations(ids[keep], targets[keep]), truncated, dropped, kept


def _build_tokenizer(corpus: ChatCorpus, spec: str | None, tokenizer: Tokenizer | None) -> ChatTokenizer:
    if tokenizer is not None:
        return with_chat_tokens(tokenizer)
    from gptbench.tokenizers.registry import build_tokenizer

    text = "".join(m.content for conv in corpus.conversations for m in conv)
    return with_chat_tokens(build_tokenizer(spec or "char", lambda: text))


def prepare_sft_data(data_spec: str | None, tokenizer_spec: str | None = None, *, block_size: int, val_fraction: float = 0.1,
                     tokenizer: Tokenizer | None = None, train_on_prompt: bool = False,
                     progress: Callable[[str], None] | None = None) -> SFTData:
    """The conversations of `data_spec` as train/val rows (val: the last `val_fraction` of
    them, at least one), with the run's chat tokenizer (`tokenizer` with the turn tokens, or
    one built from `tokenizer_spec`; char builds its vocabulary from the messages)."""
    corpus = load_chat_corpus(data_spec)
    if len(corpus.conversations) < 2:
        raise UserError(f"{corpus.spec} holds {len(corpus.conversations)} conversation; --sft needs at least 2 (one for validation)")
    tok = _build_tokenizer(corpus, tokenizer_spec, tokenizer)
    n_val = max(1, int(round(len(corpus.conversations) * val_fraction)))
    n_train = len(corpus.conversations) - n_val
    if n_train < 1:
        raise UserError(f"--val-fraction {val_fraction} leaves no training conversation of {len(corpus.conversations)}; lower it")
    train, cut_t, drop_t, kept_t = pack_rows(tok, corpus.conversations[:n_train], block_size, train_on_prompt)
    val, cut_v, drop_v, kept_v = pack_rows(tok, corpus.conversations[n_train:], block_size, train_on_prompt)
    for label, split in (("training", train), ("validation", val)):
        if len(split.ids) == 0:
            raise UserError(f"no {label} conversation keeps an assistant token within --block-size {block_size}; raise --block-size")
    total = kept_t + kept_v
    trained = len(train) + len(val)
    info = {"spec": corpus.spec, "name": corpus.name, "sha256": corpus.sha256, "format": "chat", "conversations": len(corpus.conversations),
            "tokens": total, "trained_tokens": trained, "truncated": cut_t + cut_v, "dropped": drop_t + drop_v,
            "train_on_prompt": train_on_prompt, "cache": None}
    if progress:
        progress(data_report(info))
    return SFTData(train, val, tok, info)


def data_report(info: dict[str, Any]) -> str:
    """The one-line report of a chat corpus at the start of a run."""
    share = info["trained_tokens"] / max(1, info["tokens"])
    what = "all but the first token" if info["train_on_prompt"] else "assistant tokens"
    dropped = f", {info['dropped']} dropped (no assistant token left)" if info["dropped"] else ""
    return (f"chat data {info['name']}: {info['conversations']:,} conversations, {info['tokens']:,} tokens, "
            f"{share:.1%} trained ({what}), {info['truncated']} truncated to the block size{dropped}")


def prepare_run_data(spec: Any, *, block_size: int, tokenizer: Tokenizer | None = None, progress: Callable[[str], None] | None = None) -> Any:
    """A run's data: conversations for an `--sft` run, else the plain corpus pipeline."""
    if spec.train.sft:
        return prepare_sft_data(spec.data, spec.tokenizer, block_size=block_size, val_fraction=spec.train.val_fraction,
                                tokenizer=tokenizer, train_on_prompt=spec.train.train_on_prompt, progress=progress)
    from gptbench.data import prepare_data

    return prepare_data(spec.data, spec.tokenizer, block_size=block_size, val_fraction=spec.train.val_fraction,
                        tokenizer=tokenizer, progress=progress)
