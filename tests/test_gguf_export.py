"""`gptbench convert --to gguf`: the file read back with the `gguf` package's own reader (names,
shapes, types, metadata, tokens) and its f32 weights equal to ours; its vocabulary and merges
tokenize like gptbench when Hugging Face `tokenizers` builds a byte-level BPE from them;
refusals are one line and write nothing."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from helpers import GPT2_RANKS, assert_one_line, tiny_model_config, train_fixture_run
from reference_model import perturbed_weights
from gptbench.backends.weights import load_weights, save_weights
from gptbench.cli import main
from gptbench.hfexport import PROBE_TEXT

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in ("convert", *args)])
    out, err = capsys.readouterr()
    return rc, out, err


def read(path) -> tuple[gguf.GGUFReader, dict[str, gguf.ReaderTensor]]:
    reader = gguf.GGUFReader(str(path))
    return reader, {t.name: t for t in reader.tensors}


def field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def as_array(t: gguf.ReaderTensor) -> np.ndarray:
    shape = tuple(int(d) for d in reversed(t.shape.tolist()))
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)


def weights_file(tmp_path, **model):
    cfg = tiny_model_config(**{"block_size": 64, "vocab_size": 256, **model})
    path = tmp_path / "src.safetensors"
    save_weights(path, cfg, perturbed_weights(cfg, seed=1, scale=1.0))
    return cfg, path


def hf_tokenize(reader: gguf.GGUFReader, text: str) -> list[int]:
    """Tokenize with a Hugging Face byte-level BPE built from the file's tokens and merges."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokens = field(reader, "tokenizer.ggml.tokens")
    vocab = {t: i for i, t in enumerate(tokens)}
    # the byte vocabulary's one merge never fires (llama.cpp needs the key, gguf stores no
    # empty array); Hugging Face refuses a merge of non-tokens, so it is left out here
    merges = [tuple(m.split(" ")) for m in field(reader, "tokenizer.ggml.merges")]
    merges = [m for m in merges if m[0] in vocab and m[1] in vocab]
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return tok.encode(text, add_special_tokens=False).ids


def test_run_exports_f32_with_llama_cpp_gpt2_names_and_our_weights(tmp_path, corpus_file, capsys):
    runs = tmp_path / "runs"
    run = train_fixture_run(runs, corpus_file, max_iters=20, tokenizer="byte")
    rc = main(["--runs-dir", str(runs), "convert", "fixture", str(tmp_path / "m.gguf"), "--to", "gguf"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "GGUF file, f32" in out
    reader, tensors = read(tmp_path / "m.gguf")
    cfg, ours = load_weights(run.path / "checkpoints" / "step-20.safetensors")
    assert field(reader, "general.architecture") == "gpt2"
    assert field(reader, "gpt2.context_length") == cfg.block_size
    assert field(reader, "gpt2.embedding_length") == cfg.n_embd
    assert field(reader, "gpt2.feed_forward_length") == 4 * cfg.n_embd
    assert field(reader, "gpt2.block_count") == cfg.n_layer
    assert field(reader, "gpt2.attention.head_count") == cfg.n_head
    assert field(reader, "gpt2.attention.layer_norm_epsilon") == pytest.approx(cfg.norm_eps)
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    expect = {"token_embd.weight": "wte.weight", "position_embd.weight": "wpe.weight", "output_norm.weight": "ln_f.weight",
              "output_norm.bias": "ln_f.bias", "output.weight": "lm_head.weight"}
    parts = {"attn_norm": "ln_1", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj", "ffn_norm": "ln_2",
             "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"}
    for i in range(cfg.n_layer):
        for g, c in parts.items():
            for kind in ("weight", "bias"):
                expect[f"blk.{i}.{g}.{kind}"] = f"h.{i}.{c}.{kind}"
    assert set(tensors) == set(expect)
    for gname, cname in expect.items():
        t = tensors[gname]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        np.testing.assert_array_equal(as_array(t), ours[cname])  # bit-exact, [out, in] like llama.cpp's
    # byte tokenizer: 256 single bytes that tokenize text exactly as gptbench's byte tokenizer
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == cfg.vocab_size == 256
    assert hf_tokenize(reader, PROBE_TEXT) == list(PROBE_TEXT.encode("utf-8"))


def test_gpt2_tokenizer_tokens_types_merges_and_special_ids(tmp_path, capsys):
    cfg, src = weights_file(tmp_path, vocab_size=50304, tie_embeddings=True)
    rc, out, err = cli(capsys, src, tmp_path / "g.gguf", "--to", "gguf", "--tokenizer", f"gpt2:{GPT2_RANKS}", "--dtype", "f16")
    assert rc == 0, err
    reader, tensors = read(tmp_path / "g.gguf")
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    merges = field(reader, "tokenizer.ggml.merges")
    assert len(tokens) == len(types) == 50304
    assert tokens[50256] == "<|endoftext|>" and types[50256] == gguf.TokenType.CONTROL
    assert tokens[50257] == "[PAD50257]" and set(types[50257:]) == {gguf.TokenType.UNUSED}
    assert set(types[:50256]) == {gguf.TokenType.NORMAL}
    assert len(merges) == 50000 and merges[0] == "Ġ t"
    assert field(reader, "tokenizer.ggml.eos_token_id") == 50256 == field(reader, "tokenizer.ggml.bos_token_id")
    assert field(reader, "tokenizer.ggml.pre") == "gpt-2"
    from gptbench.tokenizers.registry import load_tokenizer_spec

    assert hf_tokenize(reader, PROBE_TEXT) == load_tokenizer_spec(f"gpt2:{GPT2_RANKS}").encode(PROBE_TEXT)
    # a tied head is written out as `output.weight`, as llama.cpp's convert script does; f16 keeps
    # 1-D tensors and the position table in f32
    np.testing.assert_array_equal(as_array(tensors["output.weight"]), as_array(tensors["token_embd.weight"]))
    assert tensors["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert tensors["position_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def test_q8_0_quantizes_matrices_and_zero_biases_for_a_bias_free_model(tmp_path, capsys):
    cfg, src = weights_file(tmp_path, bias=False, tie_embeddings=False)
    _, ours = load_weights(src)
    rc, out, err = cli(capsys, src, tmp_path / "q.gguf", "--to", "gguf", "--dtype", "q8_0", "--tokenizer", "byte")
    assert rc == 0, err
    reader, tensors = read(tmp_path / "q.gguf")
    assert field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0
    q = tensors["blk.0.attn_qkv.weight"]
    assert q.tensor_type == gguf.GGMLQuantizationType.Q8_0
    w = ours["h.0.attn.c_attn.weight"]
    got = as_array(q)
    # q8_0: per block of 32, scale = max|x| / 127, so each weight is within about half a step
    blocks = w.reshape(-1, 32)
    step = np.abs(blocks).max(axis=1, keepdims=True) / 127
    # (the scale is stored as f16: its rounding adds at most 127 * 2**-11 steps)
    assert np.all(np.abs(got.reshape(-1, 32) - blocks) <= step * (0.5 + 127 * 2.0**-11))
    for name in ("blk.1.attn_qkv.bias", "blk.1.ffn_up.bias", "blk.0.attn_norm.bias", "output_norm.bias"):
        assert not as_array(tensors[name]).any()  # LayerNorm without bias == with a zero bias
    assert as_array(tensors["blk.1.ffn_up.bias"]).shape == (4 * cfg.n_embd,)


@pytest.mark.parametrize("model, needle", [
    (dict(pos="rope"), "rope positions"),
    (dict(norm="rmsnorm"), "rmsnorm"),
    (dict(mlp="relu2"), "relu2 MLPs"),
    (dict(qk_norm=True), "QK-norm"),
    (dict(logit_softcap=15.0), "soft-cap"),
])
def test_modern_recipes_are_refused_with_what_llama_cpp_lacks(tmp_path, capsys, model, needle):
    _, src = weights_file(tmp_path, **model)
    rc, out, err = cli(capsys, src, tmp_path / "m.gguf", "--to", "gguf", "--tokenizer", "byte")
    assert rc == 2
    assert_one_line(err, "llama.cpp's GPT-2 graph lacks", needle)
    assert not list(tmp_path.glob("*.gguf*"))


def test_a_chat_tokenizer_adds_its_turn_tokens_template_and_end_of_turn(tmp_path, capsys):
    from gptbench.tokenizers.byte import ByteTokenizer
    from gptbench.tokenizers.chat import CHAT_TEMPLATE, CHAT_TOKENS, ChatTokenizer

    tok = ChatTokenizer(ByteTokenizer())
    (tmp_path / "tok").mkdir()
    tok.save(tmp_path / "tok")
    _, src = weights_file(tmp_path, vocab_size=tok.vocab_size)
    rc, _, err = cli(capsys, src, tmp_path / "c.gguf", "--to", "gguf", "--tokenizer", str(tmp_path / "tok"))
    assert rc == 0, err
    reader, _ = read(tmp_path / "c.gguf")
    tokens, types = field(reader, "tokenizer.ggml.tokens"), field(reader, "tokenizer.ggml.token_type")
    assert tokens[256:] == list(CHAT_TOKENS) and set(types[256:]) == {gguf.TokenType.CONTROL}
    assert set(types[:256]) == {gguf.TokenType.NORMAL}
    assert field(reader, "tokenizer.chat_template") == CHAT_TEMPLATE
    assert field(reader, "tokenizer.ggml.eot_token_id") == tok.end_id == 259


def test_char_tokenizer_and_bad_dtype_are_refused(tmp_path, capsys, trained_run):
    runs = trained_run.path.parent
    rc = main(["--runs-dir", str(runs), "convert", trained_run.name, str(tmp_path / "c.gguf"), "--to", "gguf"])
    _, err = capsys.readouterr()
    assert rc == 2
    assert_one_line(err, "llama.cpp cannot represent a char tokenizer")
    _, src = weights_file(tmp_path)
    rc, _, err = cli(capsys, src, tmp_path / "d.gguf", "--to", "gguf", "--dtype", "q4_0", "--tokenizer", "byte")
    assert rc == 2
    assert_one_line(err, "--dtype 'q4_0'", "f32, f16 or q8_0")
    assert not list(tmp_path.glob("*.gguf*"))


def test_transformers_gguf_loader_reads_it_as_gpt2_with_our_logits_and_tokens(tmp_path, capsys):
    """An independent reader: transformers' GGUF integration (what it does for llama.cpp's own
    GPT-2 files) maps our tensors and hyper-parameters back to GPT2LMHeadModel and builds a
    tokenizer from our tokens and merges. (Its mapping sets n_ctx, not n_positions, so the
    check uses GPT-2's 1024 positions.)"""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gptbench.backends.registry import create_backend
    from gptbench.tokenizers.registry import load_tokenizer_spec

    cfg, src = weights_file(tmp_path, vocab_size=50257, block_size=1024, tie_embeddings=True)
    rc, _, err = cli(capsys, src, tmp_path / "m.gguf", "--to", "gguf", "--tokenizer", f"gpt2:{GPT2_RANKS}")
    assert rc == 0, err
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="m.gguf").eval()
    hf_tok = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="m.gguf")
    assert hf_tok.encode(PROBE_TEXT, add_special_tokens=False) == load_tokenizer_spec(f"gpt2:{GPT2_RANKS}").encode(PROBE_TEXT)
    _, tensors = load_weights(src)
    be = create_backend(cfg, "torch", device="cpu")
    be.set_weights(tensors)
    idx = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(2, 32))
    with torch.no_grad():
        theirs = model(torch.as_tensor(idx)).logits.numpy()
    np.testing.assert_allclose(theirs, be.forward_logits(idx), atol=1e-4)
