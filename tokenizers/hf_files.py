"""Hugging Face tokenizer files (`tokenizer.json` + `tokenizer_config.json`) to and from gptbench tokenizers.

Export builds the files offline, by hand, from what a run already has: tiktoken ranks (gpt2
and trained bpe), the character list (char) or nothing (byte), so `transformers` and
`mlx_lm.load` tokenize exactly as gptbench does. Import reads the same shapes back (and the
older `vocab.json` + `merges.txt` pair), so a Hugging Face folder's own tokenizer follows it
into a run instead of being ignored. Anything else is refused with one line.

How each kind maps (facts measured in the project notes, export.md §2-3):
- gpt2 / bpe: a byte-level BPE whose ids are the tiktoken ranks. Merges are recovered from
  the ranks: a token of rank r is what tiktoken's own merging reaches using only ranks < r,
  and it must end as exactly two parts. The GPT-2 pre-tokenizer regex is HF's built-in
  ByteLevel regex; any other pattern is an explicit Split in front of ByteLevel.
- byte: 256 single-byte tokens, no merges, ByteLevel without a regex; the decoder is wrapped
  in a Sequence so mlx-lm picks its exact (naive) detokenizer, which keeps NUL bytes.
- char: one token per character, no merges, no pre-tokenizer, a Fuse decoder. A character
  outside the vocabulary is dropped by the Hugging Face tokenizer (gptbench refuses it).
`tokenizer_config.json` names `PreTrainedTokenizerFast`, which loads tokenizer.json as it is;
without it transformers rebuilds a GPT2Tokenizer and silently changes char/byte ids.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gptbench.errors import UserError
from gptbench.tokenizers.base import Tokenizer
from gptbench.tokenizers.bpe import bytes_to_unicode
from gptbench.tokenizers.tiktoken_bpe import ENDOFTEXT, GPT2_PAT_STR

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
VOCAB_JSON = "vocab.json"
MERGES_TXT = "merges.txt"

_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True}
_DECODER = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}


class HFTokenizerError(UserError):
    """Hugging Face tokenizer files gptbench cannot reproduce exactly."""


# ---- export ------------------------------------------------------------------------------------
def split_in_two(token: bytes, ranks: dict[bytes, int], limit: int) -> list[bytes]:
    """tiktoken's merging of `token`'s bytes restricted to ranks below `limit` (lowest rank
    first, leftmost on ties). A token that BPE can reach ends in exactly two parts."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best: tuple[int, int] | None = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < limit and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            break
        i = best[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts


def merges_from_ranks(ranks: dict[bytes, int], where: str = "tokenizer") -> list[tuple[bytes, bytes]]:
    """The merge list, in rank order, that makes HF's BPE produce tiktoken's ids."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = split_in_two(token, ranks, rank)
        if len(parts) != 2:
            raise HFTokenizerError(f"{where}: token rank {rank} cannot be reached by merging lower ranks, so it has no Hugging Face BPE equivalent")
        merges.append((parts[0], parts[1]))
    return merges


def _bpe_model(vocab: dict[str, int], merges: list[str]) -> dict[str, Any]:
    return {
        "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
        "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
        "vocab": vocab, "merges": merges,
    }


def _added(specials: dict[str, int]) -> list[dict[str, Any]]:
    return [
        {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        for s, i in sorted(specials.items(), key=lambda kv: kv[1])
    ]


def tokenizer_json(tok: Tokenizer) -> dict[str, Any]:
    """The Hugging Face `tokenizer.json` equivalent of `tok` (HFTokenizerError if none exists);
    a chat tokenizer's turn tokens are added tokens after its base's vocabulary."""
    chat = getattr(tok, "special", None) if hasattr(tok, "template") else None
    if chat is not None:
        doc = tokenizer_json(getattr(tok, "base"))
        doc["added_tokens"] = doc["added_tokens"] + _added(chat)
        return doc
    b2c = bytes_to_unicode()
    spell = lambda bs: "".join(b2c[b] for b in bs)  # noqa: E731
    doc: dict[str, Any] = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None}
    if tok.kind == "byte":
        doc.update(pre_tokenizer={**_BYTE_LEVEL, "use_regex": False}, post_processor=None,
                   decoder={"type": "Sequence", "decoders": [_DECODER]},
                   model=_bpe_model({b2c[b]: b for b in range(256)}, []))
        return doc
    if tok.kind == "char":
        chars = getattr(tok, "chars")
        doc.update(pre_tokenizer=None, post_processor=None, decoder={"type": "Fuse"},
                   model=_bpe_model({c: i for i, c in enumerate(chars)}, []))
        return doc
    ranks: dict[bytes, int] | None = getattr(tok, "mergeable_ranks", None)
    if ranks is None:
        raise HFTokenizerError(f"tokenizer {tok.spec} has no Hugging Face equivalent")
    info = tok.to_json()
    pat, specials = info["pat_str"], dict(info["special_tokens"])
    if pat == GPT2_PAT_STR:
        pre = {**_BYTE_LEVEL, "use_regex": True}
    else:  # tiktoken's pattern verbatim (Oniguruma reads the possessive forms), then bytes
        pre = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pat}, "behavior": "Isolated", "invert": False},
            {**_BYTE_LEVEL, "use_regex": False}]}
    vocab = {spell(t): r for t, r in ranks.items()}
    vocab.update(specials)
    merges = [f"{spell(a)} {spell(b)}" for a, b in merges_from_ranks(ranks, f"tokenizer {tok.spec}")]
    doc.update(added_tokens=_added(specials), pre_tokenizer=pre,
               post_processor={"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
               decoder=dict(_DECODER), model=_bpe_model(vocab, merges))
    return doc


def tokenizer_config(tok: Tokenizer, model_max_length: int) -> dict[str, Any]:
    """`tokenizer_config.json`: the class that loads tokenizer.json verbatim, and eos/bos."""
    cfg: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": False,
        "model_max_length": int(model_max_length),
    }
    if tok.eot_id is not None:
        cfg["bos_token"] = cfg["eos_token"] = ENDOFTEXT
    template = getattr(tok, "template", None)
    if template is not None:  # a chat tokenizer: its template, and answers end at the end of a turn
        cfg["chat_template"] = template
        cfg["eos_token"] = "<|end|>"
    return cfg


def write_hf_tokenizer(tok: Tokenizer, folder: Path, model_max_length: int) -> list[str]:
    """Write tokenizer.json + tokenizer_config.json into `folder`; returns the file names."""
    from gptbench.fsutil import atomic_write_text

    folder = Path(folder)
    doc = tokenizer_json(tok)
    atomic_write_text(folder / TOKENIZER_JSON, json.dumps(doc, ensure_ascii=False))
    atomic_write_text(folder / TOKENIZER_CONFIG, json.dumps(tokenizer_config(tok, model_max_length), indent=2) + "\n")
    return [TOKENIZER_JSON, TOKENIZER_CONFIG]


# ---- import ------------------------------------------------------------------------------------
def has_hf_tokenizer(folder: Path) -> bool:
    folder = Path(folder)
    return (folder / TOKENIZER_JSON).is_file() or ((folder / VOCAB_JSON).is_file() and (folder / MERGES_TXT).is_file())


def load_hf_tokenizer(folder: Path) -> Tokenizer | None:
    """The gptbench tokenizer equal to a Hugging Face folder's tokenizer files, or None when
    the folder has none. HFTokenizerError for files gptbench cannot reproduce exactly."""
    folder = Path(folder)
    path = folder / TOKENIZER_JSON
    if path.is_file():
        doc = _read_json(path)
        if not isinstance(doc, dict) or not isinstance(doc.get("model"), dict):
            raise HFTokenizerError(f"{path} is not a Hugging Face tokenizer.json (no model); remove it or replace it with the model's own")
        return _with_chat_tokens(doc, folder, str(path))
    if (folder / VOCAB_JSON).is_file() and (folder / MERGES_TXT).is_file():
        vocab = _read_json(folder / VOCAB_JSON)
        try:
            lines = (folder / MERGES_TXT).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise HFTokenizerError(f"{folder / MERGES_TXT} is unreadable ({exc})") from None
        merges = [ln for ln in lines if ln.strip() and not ln.startswith("#version")]
        if not isinstance(vocab, dict):
            raise HFTokenizerError(f"{folder / VOCAB_JSON} is not a JSON object of token -> id")
        specials = {ENDOFTEXT: vocab[ENDOFTEXT]} if isinstance(vocab.get(ENDOFTEXT), int) else {}
        return _byte_level_bpe(vocab, merges, specials, GPT2_PAT_STR, str(folder / VOCAB_JSON))
    return None


def _with_chat_tokens(doc: dict[str, Any], folder: Path, where: str) -> Tokenizer:
    """A tokenizer.json whose added tokens end with gptbench's four turn tokens (a chat run's
    export) is its base tokenizer with them, and the template of tokenizer_config.json."""
    from gptbench.tokenizers.chat import CHAT_TEMPLATE, CHAT_TOKENS, ChatTokenizer

    added = [t for t in doc.get("added_tokens") or [] if isinstance(t, dict)]
    turn = [t for t in added if t.get("content") in CHAT_TOKENS]
    if not turn:
        return _from_tokenizer_json(doc, where)
    base = _from_tokenizer_json({**doc, "added_tokens": [t for t in added if t not in turn]}, where)
    cfg = _read_json(folder / TOKENIZER_CONFIG) if (folder / TOKENIZER_CONFIG).is_file() else {}
    template = cfg.get("chat_template") if isinstance(cfg, dict) and isinstance(cfg.get("chat_template"), str) else CHAT_TEMPLATE
    tok = ChatTokenizer(base, template)
    if {t.get("content"): t.get("id") for t in turn} != tok.special:
        raise HFTokenizerError(f"{where}: its turn tokens {', '.join(CHAT_TOKENS)} must follow the vocabulary in that order, as gptbench numbers them")
    return tok


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HFTokenizerError(f"{path} is not readable JSON ({exc}); remove it or replace it with the model's own") from None


def _from_tokenizer_json(doc: dict[str, Any], where: str) -> Tokenizer:
    model = doc["model"]
    unsupported = f"{where}: gptbench reproduces byte-level BPE (GPT-2 style), byte and char tokenizers only"
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise HFTokenizerError(f"{unsupported}; this one is {model.get('type')!r}")
    if doc.get("normalizer") is not None:
        raise HFTokenizerError(f"{unsupported}; this one has a normalizer")
    vocab: dict[str, int] = model["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    specials = {t["content"]: int(t["id"]) for t in doc.get("added_tokens") or [] if isinstance(t, dict) and t.get("special")}
    pre, decoder = doc.get("pre_tokenizer"), doc.get("decoder") or {}
    if pre is None and decoder.get("type") == "Fuse" and not merges and not specials:
        chars = sorted(vocab, key=lambda c: vocab[c])
        if any(len(c) != 1 for c in chars) or [vocab[c] for c in chars] != list(range(len(chars))) or chars != sorted(chars):
            raise HFTokenizerError(f"{where}: a character vocabulary must be single characters with ids in sorted order, as gptbench's char tokenizer numbers them")
        from gptbench.tokenizers.char import CharTokenizer

        return CharTokenizer(chars)
    pat = _byte_level_pattern(pre)
    if pat is None:
        raise HFTokenizerError(f"{unsupported}; its pre-tokenizer is {json.dumps(pre)[:80]}")
    if pat == "" and not merges and not specials and len(vocab) == 256:
        b2c = bytes_to_unicode()
        if all(vocab.get(b2c[b]) == b for b in range(256)):
            from gptbench.tokenizers.byte import ByteTokenizer

            return ByteTokenizer()
    if pat == "":
        raise HFTokenizerError(f"{unsupported}; a byte-level BPE without a pre-tokenizer regex is not one of them")
    return _byte_level_bpe(vocab, merges, specials, pat, where)


def _byte_level_pattern(pre: Any) -> str | None:
    """GPT2_PAT_STR for ByteLevel with its built-in regex, the Split pattern for
    Split + ByteLevel(no regex), "" for ByteLevel alone without a regex, else None."""
    if not isinstance(pre, dict):
        return None
    if pre.get("type") == "ByteLevel" and not pre.get("add_prefix_space"):
        return GPT2_PAT_STR if pre.get("use_regex", True) else ""
    if pre.get("type") == "Sequence":
        steps = pre.get("pretokenizers") or []
        if (len(steps) == 2 and steps[0].get("type") == "Split" and steps[0].get("behavior") == "Isolated"
                and not steps[0].get("invert") and isinstance(steps[0].get("pattern"), dict) and "Regex" in steps[0]["pattern"]
                and steps[1].get("type") == "ByteLevel" and not steps[1].get("use_regex", True) and not steps[1].get("add_prefix_space")):
            return str(steps[0]["pattern"]["Regex"])
    return None


def _byte_level_bpe(vocab: dict[str, Any], merges: list[str], specials: dict[str, int], pat: str, where: str) -> Tokenizer:
    """tiktoken ranks from a byte-level vocabulary, checked to tokenize exactly as the file does."""
    from gptbench.tokenizers.bpe import BPETokenizer
    from gptbench.tokenizers.gpt2 import GPT2_RANKS_SHA256, GPT2Tokenizer
    from gptbench.tokenizers.tiktoken_bpe import ranks_to_bytes

    import hashlib

    u2b = {c: b for b, c in bytes_to_unicode().items()}
    ranks: dict[bytes, int] = {}
    for text, idx in vocab.items():
        if text in specials:
            continue
        try:
            ranks[bytes(u2b[c] for c in text)] = int(idx)
        except (KeyError, TypeError, ValueError):
            raise HFTokenizerError(f"{where}: token {text!r} is not spelled in byte-level characters; not a GPT-2 style tokenizer") from None
    n = len(ranks)
    if sorted(ranks.values()) != list(range(n)):
        raise HFTokenizerError(f"{where}: its ordinary tokens do not have ids 0..{n - 1}; gptbench needs ids equal to merge ranks")
    if any(i < n for i in specials.values()):
        raise HFTokenizerError(f"{where}: special tokens must come after the ordinary ones (ids >= {n})")
    if pat == GPT2_PAT_STR and specials == {ENDOFTEXT: n} and hashlib.sha256(ranks_to_bytes(ranks)).hexdigest() == GPT2_RANKS_SHA256:
        return GPT2Tokenizer(ranks)
    expected = merges_from_ranks(ranks, where) if len(ranks) >= 256 and all(bytes([b]) in ranks for b in range(256)) else None
    b2c = bytes_to_unicode()
    spelled = None if expected is None else ["".join(b2c[x] for x in a) + " " + "".join(b2c[x] for x in b) for a, b in expected]
    if spelled != merges:
        raise HFTokenizerError(f"{where}: its merges are not in id order (or it lacks single bytes), so tiktoken would split text differently; gptbench cannot reproduce it exactly")
    return BPETokenizer(ranks, name=f"hf-bpe-{n + len(specials)}", pat_str=pat, special_tokens=specials or {})
