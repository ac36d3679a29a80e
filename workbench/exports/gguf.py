"""GGUF export (`convert --to gguf`): a GPT-2-architecture model and its tokenizer as llama.cpp reads them.

The file is written with the `gguf` package (llama.cpp's own writer) in the shape that
llama.cpp's `convert_hf_to_gguf.py` gives GPT-2: architecture `gpt2`, tensors
`token_embd`, `position_embd`, `blk.N.{attn_norm, attn_qkv, attn_output, ffn_norm, ffn_up,
ffn_down}`, `output_norm` and `output` (written even for a tied head, as that script does),
Linear weights in the `[out, in]` layout gptbench already uses; the `gpt2` tokenizer model
(byte-level BPE) with tokens, token types and merges, `bos`/`eos` = end-of-text.

Types: `f32`; `f16` (1-D tensors and `position_embd` stay f32, as llama.cpp keeps them);
`q8_0` (the same, and a matrix whose rows are not a multiple of 32 falls back to f16).
A model without biases gets zero biases (exactly the same function: llama.cpp's GPT-2
graph requires them). Refused with one line: what llama.cpp's GPT-2 graph lacks (RMSNorm,
ReLU²/SwiGLU, rotary positions, QK-norm, a logit soft-cap) and tokenizers it cannot
represent (char vocabularies, a BPE whose split pattern is not GPT-2's).

The written file is read back with `gguf.GGUFReader`; its tensors, mapped back to
gptbench's names (dequantized), must give the source's logits (f32 exactly, f16 and q8_0
within the half-precision tolerances) before it is renamed into place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from gptbench.backends.spec import GPTConfig
from gptbench.errors import UserError

if TYPE_CHECKING:
    from gptbench.sources import ModelSource
    from gptbench.tokenizers.base import Tokenizer

GGUF_TYPES = ("f32", "f16", "q8_0")
# `--dtype` spellings accepted for a GGUF destination
GGUF_DTYPE_NAMES = {"float32": "f32", "f32": "f32", "float16": "f16", "f16": "f16", "q8_0": "q8_0"}
# the round-trip tolerance (`roundtrip.TOLERANCE`) each type is held to
VERIFY_AS = {"f32": "float32", "f16": "float16", "q8_0": "bfloat16"}
ARCH = "gpt2"
# canonical name of a block tensor -> GGUF name (per block `blk.N.`)
BLOCK_NAMES = {
    "ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down",
}
TOP_NAMES = {"wte.weight": "token_embd.weight", "wpe.weight": "position_embd.weight",
             "ln_f.weight": "output_norm.weight", "ln_f.bias": "output_norm.bias", "lm_head.weight": "output.weight"}
_INSTALL_HINT = 'GGUF export needs the gguf package: pip install "gptbench[gguf]"'


def import_gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise UserError(_INSTALL_HINT) from None
    return gguf


def gguf_type(dtype: str) -> str:
    """`--dtype` for a GGUF destination: f32 (float32), f16 (float16) or q8_0."""
    if dtype not in GGUF_DTYPE_NAMES:
        raise UserError(f"unknown --dtype {dtype!r} for --to gguf; choose f32, f16 or q8_0")
    return GGUF_DTYPE_NAMES[dtype]


def check_gguf_exportable(config: GPTConfig) -> None:
    """llama.cpp's GPT-2 graph is LayerNorm, tanh-GELU, learned positions and plain
    attention and logits; anything else is refused with what it lacks."""
    lacks = []
    if config.norm != "layernorm":
        lacks.append(f"{config.norm} (it has LayerNorm)")
    if config.mlp != "gelu":
        lacks.append(f"{config.mlp} MLPs (it has GELU)")
    if config.pos != "learned":
        lacks.append(f"{config.pos} positions (it has a learned position table)")
    if config.qk_norm:
        lacks.append("QK-norm")
    if config.logit_softcap:
        lacks.append("a logit soft-cap")
    if lacks:
        raise UserError(f"llama.cpp's GPT-2 graph lacks {', '.join(lacks)}, so this model cannot be exported to GGUF; "
                        "convert it --to torch or --to mlx instead")


def gguf_tensors(config: GPTConfig, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Canonical float32 tensors -> GGUF names (zero biases for a bias-free model, the
    tied head written out as `output.weight`)."""
    out: dict[str, np.ndarray] = {}
    C = config.n_embd
    for name, arr in tensors.items():
        out[gguf_name(name)] = np.ascontiguousarray(arr, dtype=np.float32)
    if config.tie_embeddings:
        out["output.weight"] = out["token_embd.weight"]
    zeros = {"ln_1": C, "attn.c_attn": 3 * C, "attn.c_proj": C, "ln_2": C, "mlp.c_fc": config.mlp_hidden, "mlp.c_proj": C}
    for i in range(config.n_layer):
        for part, n in zeros.items():
            out.setdefault(f"blk.{i}.{BLOCK_NAMES[part]}.bias", np.zeros(n, dtype=np.float32))
    out.setdefault("output_norm.bias", np.zeros(C, dtype=np.float32))
    return out


def gguf_name(name: str) -> str:
    if name in TOP_NAMES:
        return TOP_NAMES[name]
    _, layer, rest = name.split(".", 2)  # h.N.<part>.<weight|bias>
    part, _, kind = rest.rpartition(".")
    return f"blk.{layer}.{BLOCK_NAMES[part]}.{kind}"


def canonical_tensors(config: GPTConfig, named: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """GGUF tensors (float32) back to the canonical names and shapes `config` has."""
    back = {gguf_name(k): k for k in config.canonical_shapes()}
    out = {}
    for gname, canon in back.items():
        if gname not in named:
            raise UserError(f"verification failed: the GGUF file lacks {gname}; this is a bug, nothing was written")
        out[canon] = np.asarray(named[gname], dtype=np.float32).reshape(config.canonical_shapes()[canon])
    return out


@dataclass(frozen=True)
class GGUFVocab:
    """The tokenizer as llama.cpp's `gpt2` model reads it."""

    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    eot_id: int | None
    chat_template: str | None = None  # a chat run's (Jinja, Hugging Face's form)
    end_of_turn_id: int | None = None  # a chat run's <|end|>


def gguf_vocab(tok: "Tokenizer", vocab_size: int) -> GGUFVocab:
    """Byte-level spelled tokens by id (padded to the model's vocabulary with unused
    `[PADn]` entries), their types and the BPE merges; refused for what llama.cpp cannot
    represent. A chat run's turn tokens are control tokens after its base vocabulary, its
    template is `tokenizer.chat_template`, and `<|end|>` is the end-of-turn token."""
    from gptbench.tokenizers.chat import is_chat

    if is_chat(tok):
        base = gguf_vocab(tok.base, vocab_size)  # type: ignore[attr-defined]
        tokens, types = list(base.tokens), list(base.types)
        for text, i in tok.special.items():  # type: ignore[attr-defined]
            tokens[i], types[i] = text, int(import_gguf().TokenType.CONTROL)
        return GGUFVocab(tokens, types, base.merges, base.pre, base.eot_id, tok.template, tok.end_id)  # type: ignore[attr-defined]
    gguf = import_gguf()
    from gptbench.tokenizers.bpe import bytes_to_unicode
    from gptbench.tokenizers.hf_files import merges_from_ranks
    from gptbench.tokenizers.tiktoken_bpe import GPT2_PAT_STR

    b2c = bytes_to_unicode()
    spell = lambda bs: "".join(b2c[b] for b in bs)  # noqa: E731
    by_id: dict[int, tuple[str, int]] = {}
    merges: list[str] = []
    if tok.kind == "byte":
        by_id = {b: (b2c[b], gguf.TokenType.NORMAL) for b in range(256)}
        # llama.cpp's gpt2 vocabulary needs a merges key and gguf cannot store an empty
        # array: one merge that never fires (no merge ever makes "ĠĠ", so it is never a symbol)
        merges = [f"{b2c[32] * 2} {b2c[32]}"]
    elif getattr(tok, "mergeable_ranks", None) is not None:
        info = tok.to_json()
        if info["pat_str"] != GPT2_PAT_STR:
            raise UserError(f"tokenizer {tok.spec} splits text with its own pattern, and llama.cpp's gpt2 tokenizer only has GPT-2's; "
                            "export it --to hf instead")
        ranks: dict[bytes, int] = tok.mergeable_ranks  # type: ignore[attr-defined]
        by_id = {r: (spell(t), gguf.TokenType.NORMAL) for t, r in ranks.items()}
        by_id.update({i: (s, gguf.TokenType.CONTROL) for s, i in info["special_tokens"].items()})
        merges = [f"{spell(a)} {spell(b)}" for a, b in merges_from_ranks(ranks, f"tokenizer {tok.spec}")]
    else:
        raise UserError(f"llama.cpp cannot represent a {tok.kind} tokenizer ({tok.spec}); GGUF export takes gpt2, trained bpe or byte tokenizers")
    tokens, types = [], []
    for i in range(vocab_size):
        text, kind = by_id.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED))
        tokens.append(text)
        types.append(int(kind))
    return GGUFVocab(tokens, types, merges, "gpt-2", tok.eot_id)


@dataclass
class GGUFFile:
    """What was written and how it checked out."""

    max_diff: float
    verified_on: str
    batch_shape: tuple[int, int]
    n_tensors: int
    size_bytes: int


def _tensor_type(gguf: Any, name: str, arr: np.ndarray, qtype: str) -> Any:
    """The GGML type a tensor is stored as (llama.cpp's convert script's rules)."""
    T = gguf.GGMLQuantizationType
    if qtype == "f32" or arr.ndim <= 1 or name == "position_embd.weight":
        return T.F32
    if qtype == "q8_0" and arr.shape[-1] % 32 == 0:
        return T.Q8_0
    return T.F16


def write_gguf(path: Path, config: GPTConfig, tensors: Mapping[str, np.ndarray], vocab: GGUFVocab | None,
               qtype: str, name: str) -> int:
    """Write the GGUF file at `path`; returns its size in bytes."""
    gguf = import_gguf()
    w = gguf.GGUFWriter(str(path), ARCH)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_context_length(config.block_size)
    w.add_embedding_length(config.n_embd)
    w.add_feed_forward_length(config.mlp_hidden)
    w.add_block_count(config.n_layer)
    w.add_head_count(config.n_head)
    w.add_layer_norm_eps(config.norm_eps)
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    w.add_file_type(ftype[qtype])
    if vocab is not None:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(vocab.pre)
        w.add_token_list(vocab.tokens)
        w.add_token_types(vocab.types)
        w.add_token_merges(vocab.merges)
        if vocab.eot_id is not None:
            w.add_bos_token_id(vocab.eot_id)
            w.add_eos_token_id(vocab.eot_id)
        w.add_add_bos_token(False)
        if vocab.chat_template is not None:
            w.add_chat_template(vocab.chat_template)
            w.add_eot_token_id(vocab.end_of_turn_id)
    for tname, arr in gguf_tensors(config, tensors).items():
        ttype = _tensor_type(gguf, tname, arr, qtype)
        data = arr if ttype == gguf.GGMLQuantizationType.F32 else gguf.quants.quantize(arr, ttype)
        w.add_tensor(tname, data, raw_dtype=ttype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.stat().st_size


def read_gguf_tensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a GGUF file, dequantized to float32, in numpy (row-major) shape."""
    gguf = import_gguf()
    reader = gguf.GGUFReader(str(path))
    out = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # GGUF lists dims fastest first
        out[t.name] = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
    return out


def export_gguf(source: "ModelSource", dst: Path, dtype: str, tok: "Tokenizer | None", verify_on: str, device: str) -> GGUFFile:
    """Stage, verify and rename into place `dst` (the caller refused an existing or
    unwritable destination)."""
    from gptbench.fsutil import atomic_path
    from gptbench.roundtrip import verify_logits

    qtype = gguf_type(dtype)
    check_gguf_exportable(source.config)
    vocab = gguf_vocab(tok, source.config.vocab_size) if tok is not None else None
    with atomic_path(dst) as staged:
        size = write_gguf(staged, source.config, source.tensors, vocab, qtype, dst.stem)
        named = read_gguf_tensors(staged)
        tensors = canonical_tensors(source.config, named)
        diff, where, shape = verify_logits(source, source.config, tensors, VERIFY_AS[qtype], verify_on, device)
    return GGUFFile(diff, where, shape, len(named), size)
