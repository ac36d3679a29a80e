"""Greedy generation is the same token stream on torch and MLX, cached or not.

100 steps run past the context window (the fixture run has block_size 32), so the sliding
window's re-prefill is part of what must agree. The weights produce varied output (the
trained fixture run; random variants scaled up), so a wrong attention mask, a broken cache
or a mis-ordered filter changes the tokens and fails the test.
"""

from __future__ import annotations

import numpy as np
import pytest

from reference_model import perturbed_weights
from gptbench.backends.registry import create_backend
from gptbench.backends.spec import GPTConfig
from gptbench.backends.generate import generate, generate_tokens
from gptbench.backends.sampling import SamplingParams
from gptbench.backends.weights import load_weights

STEPS = 100


def streams(config: GPTConfig, weights: dict, prompts: list[list[int]], params: SamplingParams, caches=(True, False)) -> dict:
    out = {}
    for name in ("torch", "mlx"):
        be = create_backend(config, name, device="cpu")
        be.set_weights(weights)
        for cache in caches:
            out[(name, cache)] = np.stack(list(generate_tokens(be, prompts, params, use_cache=cache)), axis=1)
    return out


def assert_all_equal(out: dict) -> np.ndarray:
    ref = out[("torch", True)]
    for key, toks in out.items():
        np.testing.assert_array_equal(toks, ref, err_msg=f"{key} differs from torch with cache")
    return ref


def test_trained_run_greedy_100_tokens(trained_run):
    from gptbench.tokenizers.registry import load_tokenizer

    config, weights = load_weights(trained_run.checkpoint("last").path)
    assert config.block_size < STEPS  # the window slides during the test
    greedy = SamplingParams(temperature=0.0, max_new_tokens=STEPS)
    prompt = load_tokenizer(trained_run.path).encode("ROMEO:")
    toks = assert_all_equal(streams(config, weights, [prompt], greedy))
    assert toks.shape == (1, STEPS)
    # greedy on a briefly trained char model settles into a phrase (" the the ..."): still
    # several different tokens; the penalty test below gets fully varied output
    assert len(set(toks[0].tolist())) >= 3, "degenerate output: the test could not tell backends apart"


def test_trained_run_text_is_identical_through_the_engine(trained_run):
    from gptbench.tokenizers.registry import load_tokenizer

    config, weights = load_weights(trained_run.checkpoint("last").path)
    tok = load_tokenizer(trained_run.path)
    texts = []
    for name in ("torch", "mlx"):
        be = create_backend(config, name, device="cpu")
        be.set_weights(weights)
        res = generate(be, tok, "ROMEO:", SamplingParams(temperature=0.0, max_new_tokens=60))
        assert res.finish_reason == "length"
        assert len(res.tokens) == 60
        texts.append(res.text)
    assert texts[0] == texts[1]
    assert len(set(texts[0])) >= 3


# Variants that between them cover both norms, all three MLPs, bias on/off, tied/untied
# heads and today's recipe (every variant's logits are compared in test_parity_model.py).
VARIANTS = [
    dict(norm="layernorm", mlp="gelu", bias=True, tie_embeddings=True),
    dict(norm="layernorm", mlp="swiglu", bias=False, tie_embeddings=False),
    dict(norm="rmsnorm", mlp="relu2", bias=True, tie_embeddings=False),
    dict(norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=True),
    # rotary positions continue in the cache and restart with each re-prefilled window
    dict(norm="layernorm", mlp="gelu", bias=True, tie_embeddings=False, pos="rope"),
    dict(norm="rmsnorm", mlp="relu2", bias=False, tie_embeddings=False, pos="rope", qk_norm=True, logit_softcap=15.0),
]
# random weights whose greedy output is varied (checked); a rope-only model needs another
# seed than 3, whose output collapses to one token
WEIGHT_SEEDS = {4: 5}


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(str(x) for x in v.values()))
def test_variants_greedy_batched_left_padded(variant):
    """Two prompts of different lengths in one batch (left padding), 100 greedy steps."""
    cfg = GPTConfig(vocab_size=67, block_size=32, n_layer=2, n_head=2, n_embd=32, **variant)
    weights = perturbed_weights(cfg, seed=WEIGHT_SEEDS.get(VARIANTS.index(variant), 3), scale=2.0)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=STEPS)
    toks = assert_all_equal(streams(cfg, weights, [[5, 9, 14, 3, 22, 7, 1], [40, 2]], greedy))
    for row in toks:
        assert len(set(row.tolist())) >= 8, "degenerate output: the test could not tell backends apart"


def test_repetition_penalty_greedy_matches(trained_run):
    config, weights = load_weights(trained_run.checkpoint("last").path)
    params = SamplingParams(temperature=0.0, repetition_penalty=1.5, repetition_window=16, max_new_tokens=STEPS)
    # (cache on only: the uncached path is covered above)
    plain = assert_all_equal(streams(config, weights, [[1, 2, 3], [4]], SamplingParams(temperature=0.0, max_new_tokens=STEPS), caches=(True,)))
    penalised = assert_all_equal(streams(config, weights, [[1, 2, 3], [4]], params, caches=(True,)))
    assert not np.array_equal(plain, penalised)  # the penalty changed the output on both
    assert min(len(set(row.tolist())) for row in penalised) >= 8
