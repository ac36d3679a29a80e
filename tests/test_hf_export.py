"""`gptbench convert --to hf|mlx-lm` folders, loaded by the tools themselves as they are:
`transformers.pipeline("text-generation")` greedy text equals `gptbench sample
--temperature 0`, and `mlx_lm.load` + greedy generation gives gptbench's token ids, for
runs with GPT-2's tokenizer, a trained BPE, bytes and characters."""

from __future__ import annotations

import json

import pytest

from helpers import save_hf_gpt2, train_fixture_run
from gptbench.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = {"gpt2": "ROMEO: line 4 of the", "bpe": "ROMEO: line 4 of the", "byte": "JULIET: and so", "char": "ROMEO: line"}
N = 20


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus_file):
    """One finished run per tokenizer kind: gpt2 (fine-tuned from a transformers-made GPT-2),
    a trained bpe, byte (tied heads: mlx-lm needs them) and char (untied)."""
    root = tmp_path_factory.mktemp("export-runs")
    mp = pytest.MonkeyPatch()  # module scope: conftest's per-test isolation is not active yet
    from helpers import GPT2_RANKS

    mp.setenv("GPTBENCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "gptbench-cache"))
    mp.setenv("GPTBENCH_GPT2_RANKS", str(GPT2_RANKS))
    mp.setenv("HF_HUB_OFFLINE", "1")
    try:
        save_hf_gpt2(root / "hf-base")
        assert main(["train", "--no-ui", "--runs-dir", str(root), "--init-from", str(root / "hf-base"), "--data", str(corpus_file),
                     "--name", "gpt2", "--max-iters", "2", "--batch-size", "2", "--grad-accum", "1", "--eval-iters", "1",
                     "--sample-tokens", "0", "--device", "cpu"]) == 0
        for kind, tok in (("bpe", "bpe:320"), ("byte", "byte"), ("char", "char")):
            train_fixture_run(root, corpus_file, name=kind, tokenizer=tok, model={"tie_embeddings": kind != "char", "block_size": 64}, lr=3e-3, sample_tokens=0)
    finally:
        mp.undo()
    return root


def gptbench_sample(capsys, runs, name: str) -> str:
    assert main(["sample", "--run", name, "--runs-dir", str(runs), "--prompt", PROMPTS[name], "--temperature", "0",
                 "--max-new-tokens", str(N), "--no-stream"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n")
    return out[:-1]


def gptbench_ids(runs, name: str) -> list[int]:
    from gptbench.backends.generate import generate
    from gptbench.backends.sampling import SamplingParams
    from gptbench.loading import load_model
    from gptbench.runstore import RunStore

    lm = load_model(RunStore(runs), run=name, backend="torch", device="cpu")
    return generate(lm.backend, lm.tokenizer, lm.tokenizer.encode(PROMPTS[name]), SamplingParams(temperature=0, max_new_tokens=N)).tokens


def export(capsys, runs, name: str, dst, to: str) -> str:
    rc = main(["convert", name, str(dst), "--to", to, "--runs-dir", str(runs)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out


@pytest.mark.parametrize("name", ["gpt2", "bpe", "byte"])
def test_pipeline_and_mlx_lm_generate_what_gptbench_samples(name, runs, tmp_path, capsys):
    import mlx_lm
    from transformers import pipeline

    folder = tmp_path / "export"
    out = export(capsys, runs, name, folder, "mlx-lm")
    assert "note:" not in out  # mlx_lm.load verified it; nothing left unchecked
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((folder / "config.json").read_text())
    eos = {"gpt2": 50256, "bpe": 320 - 1, "byte": None}[name]
    assert config.get("eos_token_id") == eos
    assert json.loads((folder / "generation_config.json").read_text()).get("eos_token_id") == eos

    want_text = gptbench_sample(capsys, runs, name)
    want_ids = gptbench_ids(runs, name)
    assert len(set(want_ids)) > 1  # greedy output that varies: a comparison that can fail
    pipe = pipeline("text-generation", model=str(folder), device="cpu")
    got = pipe(PROMPTS[name], max_new_tokens=N, do_sample=False)[0]["generated_text"]
    assert got == want_text

    model, tok = mlx_lm.load(str(folder))
    prompt = tok.encode(PROMPTS[name])
    assert prompt == pipe.tokenizer.encode(PROMPTS[name])
    ids = [r.token for r in mlx_lm.stream_generate(model, tok, prompt, max_tokens=N)]
    assert ids == want_ids


def test_char_export_loads_in_transformers_and_untied_is_refused_for_mlx_lm(runs, tmp_path, capsys):
    from transformers import pipeline

    rc = main(["convert", "char", str(tmp_path / "mlx"), "--to", "mlx-lm", "--runs-dir", str(runs)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1
    assert "mlx-lm's gpt2 always ties the LM head" in err
    assert not (tmp_path / "mlx").exists()

    out = export(capsys, runs, "char", tmp_path / "hf", "hf")
    assert "note: untied LM head: transformers loads this folder, mlx_lm.load does not" in out
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["eos_token_id"] is None  # char: no end-of-text token (GPT2Config's default would be 50256)
    pipe = pipeline("text-generation", model=str(tmp_path / "hf"), device="cpu")
    want = gptbench_sample(capsys, runs, "char")
    assert pipe(PROMPTS["char"], max_new_tokens=N, do_sample=False)[0]["generated_text"] == want
    assert len(set(want[len(PROMPTS["char"]):])) > 1


def test_mlx_lm_target_needs_a_tokenizer(tmp_path, capsys):
    from gptbench.backends.weights import save_weights
    from helpers import tiny_model_config
    from reference_model import perturbed_weights

    cfg = tiny_model_config()
    save_weights(tmp_path / "w.safetensors", cfg, perturbed_weights(cfg))
    rc = main(["convert", str(tmp_path / "w.safetensors"), str(tmp_path / "out"), "--to", "mlx-lm"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "mlx_lm.load needs the tokenizer files" in err
    assert not (tmp_path / "out").exists()
