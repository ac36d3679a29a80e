"""The Hugging Face GPT-2 layout (`transformers.GPT2LMHeadModel`) as an import/export mapping.

The difference from the canonical layout is small and listed explicitly:
- `save_pretrained` names carry a `transformer.` prefix (except `lm_head.weight`); checkpoints
  saved from a bare `GPT2Model` (like the hub's original `gpt2`) have none. Both are read;
  exports are written without it, the hub's own layout, because that is what mlx-lm's gpt2
  loads (transformers reads both);
- the four projections are `Conv1D` modules storing `[in, out]`, the transpose of a Linear:
  exactly the names in `CONV1D_WEIGHTS` are transposed, nothing else;
- the attention `attn.bias` (causal mask) and `attn.masked_bias` buffers that some
  checkpoints carry are not parameters and are dropped on import;
- a tied head is absent from the file (save_pretrained drops shared tensors) or, when
  present, equal to `wte.weight`; it is never written for a tied model.

Only the GPT-2 spec variant maps: layernorm, tanh-GELU, biases; the head may be tied or not
(`tie_word_embeddings`). Everything is numpy; transformers is not imported.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from gptbench.backends.spec import GPTConfig
from gptbench.errors import ConfigError
from gptbench.backends.weights import load_tensors, read_header
from gptbench.errors import UserError

PREFIX = "transformer."
# Canonical suffixes of the Conv1D weights ([in, out] in HF, [out, in] here).
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers (not parameters) that older GPT-2 checkpoints include.
IGNORED_BUFFERS = ("attn.bias", "attn.masked_bias")
# Activations that are GELU's tanh approximation (the spec's "gelu").
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
HF_ARCHITECTURES = ("GPT2LMHeadModel", "GPT2Model")


class HFError(UserError):
    """A Hugging Face folder or config that cannot be mapped to the GPT spec."""


def is_conv1d(name: str) -> bool:
    """Whether canonical tensor `name` is stored transposed (Conv1D) in the HF layout."""
    return name.startswith("h.") and name.endswith(CONV1D_WEIGHTS)


def _is_buffer(name: str) -> bool:
    """`h.N.attn.bias` / `h.N.attn.masked_bias` (not `h.N.attn.c_attn.bias`)."""
    parts = name.split(".")
    return len(parts) == 4 and parts[0] == "h" and parts[2] + "." + parts[3] in IGNORED_BUFFERS


def is_hf_folder(path: str | os.PathLike[str]) -> bool:
    """A folder with a Hugging Face `config.json` (any architecture)."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and ("model_type" in data or "architectures" in data)


def looks_like_hf_gpt2_tensors(names: list[str]) -> bool:
    """True for the tensor names of a GPT-2 checkpoint (with or without the prefix)."""
    stripped = {n[len(PREFIX):] if n.startswith(PREFIX) else n for n in names}
    return "wte.weight" in stripped and "h.0.attn.c_attn.weight" in stripped


# ---- config ------------------------------------------------------------------------------
def check_exportable(config: GPTConfig) -> None:
    """GPT2LMHeadModel is learned positions + layernorm + tanh GELU + biases, with plain
    attention and logits; anything else (rotary positions, QK-norm and a logit soft-cap
    included) is not GPT-2's architecture and cannot be exported."""
    wrong = []
    if config.norm != "layernorm":
        wrong.append(f"norm={config.norm}")
    if config.mlp != "gelu":
        wrong.append(f"mlp={config.mlp}")
    if not config.bias:
        wrong.append("bias=False")
    if config.pos != "learned":
        wrong.append(f"pos={config.pos}")
    if config.qk_norm:
        wrong.append("qk_norm=True")
    if config.logit_softcap:
        wrong.append(f"logit_softcap={config.logit_softcap:g}")
    if wrong:
        raise HFError(
            f"this model is not GPT-2's architecture ({', '.join(wrong)}; Hugging Face GPT-2 has learned positions, "
            "layernorm, gelu and biases, no QK-norm or logit soft-cap); convert it --to torch or --to mlx instead"
        )


def config_to_hf(config: GPTConfig, dtype: str = "float32", eos_token_id: int | None = None) -> dict[str, Any]:
    """The `config.json` of an equivalent GPT2LMHeadModel. `n_ctx` repeats `n_positions`:
    transformers no longer writes it, but mlx-lm's gpt2 requires it. `eos_token_id` is the
    tokenizer's end-of-text (also bos, as in GPT-2); None writes neither."""
    check_exportable(config)
    out: dict[str, Any] = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": config.norm_eps,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": config.tie_embeddings,
        "use_cache": True,
        "dtype": dtype,
    }
    # Written even when None: GPT2Config would otherwise default both to 50256.
    out["bos_token_id"] = out["eos_token_id"] = None if eos_token_id is None else int(eos_token_id)
    return out


def generation_config(eos_token_id: int | None) -> dict[str, Any]:
    """`generation_config.json`. It must repeat eos: when this file exists, transformers'
    generate takes eos from it alone (a file without eos never stops)."""
    out: dict[str, Any] = {"_from_model_config": True, "use_cache": True}
    if eos_token_id is not None:
        out["bos_token_id"] = out["eos_token_id"] = int(eos_token_id)
    return out


def config_from_hf(data: Mapping[str, Any], source: str = "config.json") -> GPTConfig:
    """GPTConfig of a GPT-2 `config.json`; other architectures and unsupported options are
    HFErrors naming what was found."""
    model_type = data.get("model_type")
    archs = data.get("architectures") or []
    if model_type != "gpt2" and not any(a in HF_ARCHITECTURES for a in archs):
        found = model_type or ", ".join(archs) or "unknown"
        raise HFError(f"{source} describes a {found!r} model; only Hugging Face GPT-2 (model_type gpt2) converts to gptbench")
    act = data.get("activation_function", "gelu_new")
    if act not in TANH_GELUS:
        raise HFError(f"{source}: activation_function {act!r} is not supported; gptbench's GPT-2 uses gelu_new (tanh GELU)")
    n_embd = int(data.get("n_embd", 768))
    n_inner = data.get("n_inner")
    if n_inner not in (None, 4 * n_embd):
        raise HFError(f"{source}: n_inner={n_inner} is not supported; gptbench's MLP is 4 x n_embd ({4 * n_embd})")
    for flag, ok in (("scale_attn_by_inverse_layer_idx", False), ("add_cross_attention", False), ("scale_attn_weights", True)):
        if bool(data.get(flag, ok)) != ok:
            raise HFError(f"{source}: {flag}={data.get(flag)} is not supported by gptbench's GPT-2 spec")
    try:
        return GPTConfig(
            vocab_size=int(data.get("vocab_size", 50257)),
            block_size=int(data.get("n_positions", data.get("n_ctx", 1024))),
            n_layer=int(data.get("n_layer", 12)),
            n_head=int(data.get("n_head", 12)),
            n_embd=n_embd,
            dropout=0.0,  # inference default; fine-tuning sets its own
            bias=True,
            norm="layernorm",
            mlp="gelu",
            tie_embeddings=bool(data.get("tie_word_embeddings", True)),
            norm_eps=float(data.get("layer_norm_epsilon", 1e-5)),
        )
    except (ConfigError, TypeError, ValueError) as exc:
        raise HFError(f"{source}: {exc}") from None


# ---- tensors ------------------------------------------------------------------------------
def to_hf(config: GPTConfig, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Canonical tensors -> the hub's GPT-2 layout: GPT2Model names without a prefix, Conv1D
    weights transposed, `lm_head.weight` only for an untied head, no attention buffers."""
    check_exportable(config)
    return {name: np.ascontiguousarray(arr.T) if is_conv1d(name) else arr for name, arr in tensors.items()}


def from_hf(config: GPTConfig, tensors: Mapping[str, np.ndarray], source: str = "model") -> dict[str, np.ndarray]:
    """GPT-2 state dict (prefixed or not) -> canonical tensors, checked against `config`."""
    from gptbench.backends.weights import check_tensors

    out: dict[str, np.ndarray] = {}
    head = None
    for name, arr in tensors.items():
        if name == "lm_head.weight":
            head = arr
            continue
        key = name[len(PREFIX):] if name.startswith(PREFIX) else name
        if _is_buffer(key):
            continue
        out[key] = np.ascontiguousarray(arr.T) if is_conv1d(key) and arr.ndim == 2 else arr
    if head is not None:
        if not config.tie_embeddings:
            out["lm_head.weight"] = head
        elif "wte.weight" in out and head.shape == out["wte.weight"].shape and not np.array_equal(head, out["wte.weight"]):
            raise HFError(f"{source}: tie_word_embeddings is true but lm_head.weight differs from wte.weight")
    check_tensors(config, out, source=source)
    return out


def load_hf_folder(path: str | os.PathLike[str]) -> tuple[GPTConfig, dict[str, np.ndarray], dict[str, Any]]:
    """Read a Hugging Face GPT-2 folder: config.json + model.safetensors (or a sharded
    model.safetensors.index.json). Returns (config, canonical float tensors, raw config)."""
    folder = Path(path)
    cfg_path = folder / "config.json"
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HFError(f"{folder} has no config.json; a Hugging Face model folder needs config.json + model.safetensors") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HFError(f"{cfg_path} is not readable JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise HFError(f"{cfg_path} is not a JSON object")
    config = config_from_hf(raw, source=str(cfg_path))
    files = _weight_files(folder)
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        read_header(f)  # one-line errors for truncated / foreign files before loading
        part, _ = load_tensors(f)
        tensors.update(part)
    canonical = from_hf(config, tensors, source=str(files[0] if len(files) == 1 else folder))
    return config, {k: np.asarray(v, dtype=np.float32) for k, v in canonical.items()}, raw


def _weight_files(folder: Path) -> list[Path]:
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            return [folder / f for f in sorted(set(weight_map.values()))]
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
            raise HFError(f"{index} is not a valid safetensors index ({exc})") from None
    if (folder / "pytorch_model.bin").is_file():
        raise HFError(
            f"{folder} has only pytorch_model.bin; gptbench reads safetensors: re-save it with "
            "save_pretrained(..., safe_serialization=True)"
        )
    raise HFError(f"{folder} has no model.safetensors")

