"""The masked SFT loss: torch and MLX against a float64 reference that ignores masked positions.

Batches are real chat rows (`gptbench.chat.sft.pack_rows`: one conversation per row, padded,
targets -1 outside the assistant's tokens). The reference is written here from the
definition: float64 logits (`reference_model`), log-softmax, the log-probability of each
target, weighted by the mask (1 trained, 0 not) and divided by the mask's sum; its gradient
comes from float64 autograd through that same weighted sum (no ignore_index anywhere).
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers import tiny_model_config
from reference_model import perturbed_weights, reference_logits
from gptbench.backends.optim import OptimConfig
from gptbench.backends.registry import create_backend
from gptbench.chat.sft import pack_rows
from gptbench.tokenizers.byte import ByteTokenizer
from gptbench.tokenizers.chat import ChatTokenizer, Message

BACKENDS = ["torch", "mlx"]
CONVERSATIONS = [
    [Message("system", "Be brief."), Message("user", "2+2?"), Message("assistant", "4")],
    [Message("user", "Say hi"), Message("assistant", "hi there"), Message("user", "again"), Message("assistant", "hi")],
    [Message("user", "spell cat backwards"), Message("assistant", "tac")],
    [Message("user", "a long question that runs past the block " * 3), Message("assistant", "cut")],
]


@pytest.fixture(scope="module")
def rows():
    tok = ChatTokenizer(ByteTokenizer())
    convs, truncated, dropped, _ = pack_rows(tok, CONVERSATIONS, block_size=32, train_on_prompt=False)
    assert (truncated, dropped) == (1, 1)  # the long one is cut before its answer, so dropped
    return tok, convs


def _masked_reference_loss(cfg, w, x, y) -> float:
    logits = reference_logits(cfg, w, x)
    m = logits.max(axis=-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(axis=-1, keepdims=True))
    mask = (y >= 0).astype(np.float64)
    picked = np.take_along_axis(logp, np.where(y >= 0, y, 0)[..., None], axis=-1)[..., 0]
    return float(-(picked * mask).sum() / mask.sum())


def _masked_reference_gradients(cfg, w, batches):
    import torch

    from gptbench.backends.torch.model import GPT

    model = GPT(cfg).double()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(torch.from_numpy(np.asarray(w[name], dtype=np.float64)))
    for x, y in batches:
        logp = torch.log_softmax(model(torch.from_numpy(x)), dim=-1)
        mask = torch.from_numpy((y >= 0).astype(np.float64))
        picked = logp.gather(-1, torch.from_numpy(np.where(y >= 0, y, 0))[..., None])[..., 0]
        (-(picked * mask).sum() / mask.sum() / len(batches)).backward()
    return {name: p.grad.numpy().copy() for name, p in params.items()}


def _setup(name, tok):
    cfg = tiny_model_config(vocab_size=tok.vocab_size, block_size=32, tie_embeddings=False)
    be = create_backend(cfg, name, device="cpu", seed=0)
    w = perturbed_weights(cfg, seed=3)
    be.set_weights(w)
    return cfg, be, w


@pytest.mark.parametrize("name", BACKENDS)
def test_masked_loss_matches_the_float64_reference(name, rows):
    tok, convs = rows
    cfg, be, w = _setup(name, tok)
    x, y = convs.ids[:, :32], convs.targets[:, :32]
    assert (y < 0).any() and (y >= 0).any()
    want = _masked_reference_loss(cfg, w, x, y)
    assert be.eval_loss(x, y) == pytest.approx(want, rel=1e-5)
    # masked positions really are ignored: other targets there change nothing
    y_other = np.where(y >= 0, y, -1)
    assert be.eval_loss(x, y_other) == pytest.approx(want, rel=1e-5)
    # and the unmasked loss is a different number (the mask matters)
    full = convs.ids[:, 1:33]
    assert abs(be.eval_loss(x, full) - want) > 1e-3


@pytest.mark.parametrize("name", BACKENDS)
def test_masked_gradient_step_matches_the_float64_reference(name, rows):
    """One SGD-like AdamW step from zero moments moves each weight by lr * sign-ish(g):
    checking it against the reference gradient's step checks the masked gradient."""
    tok, convs = rows
    cfg, be, w = _setup(name, tok)
    opt = OptimConfig(weight_decay=0.0, beta1=0.9, beta2=0.95, grad_clip=0.0, eps=1e-6)
    be.setup_optimizer(opt)
    batches = [(convs.ids[:2, :32], convs.targets[:2, :32]), (convs.ids[1:, :32], convs.targets[1:, :32])]
    g = _masked_reference_gradients(cfg, w, batches)
    res = be.train_step(batches, lr=1e-2)
    want_loss = np.mean([_masked_reference_loss(cfg, w, x, y) for x, y in batches])
    assert res.loss == pytest.approx(want_loss, rel=1e-5)
    assert res.grad_norm == pytest.approx(np.sqrt(sum((v**2).sum() for v in g.values())), rel=1e-4)
    got = be.get_weights()
    C = cfg.n_embd
    for k, gk in g.items():
        m, v = 0.1 * gk, 0.05 * gk**2
        step = 1e-2 * (m / 0.1) / (np.sqrt(v / 0.05) + opt.eps)
        keep = np.r_[0:C, 2 * C : 3 * C] if k.endswith("c_attn.bias") else slice(None)  # see the contract suite
        np.testing.assert_allclose(got[k][keep], (w[k] - step)[keep], rtol=1e-4, atol=2e-4, err_msg=k)


def test_torch_and_mlx_agree_on_masked_loss_and_step(rows):
    tok, convs = rows
    out = {}
    for name in BACKENDS:
        cfg, be, w = _setup(name, tok)
        be.setup_optimizer(OptimConfig(weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0, eps=1e-6))
        batch = [(convs.ids[:, :32], convs.targets[:, :32])]
        loss = be.eval_loss(*batch[0])
        res = be.train_step(batch, lr=1e-3)
        out[name] = (loss, float(res.loss), be.get_weights())
    assert out["torch"][0] == pytest.approx(out["mlx"][0], rel=1e-5)
    assert out["torch"][1] == pytest.approx(out["mlx"][1], rel=1e-5)
    for k, v in out["torch"][2].items():
        np.testing.assert_allclose(v, out["mlx"][2][k], rtol=1e-4, atol=5e-5, err_msg=k)
