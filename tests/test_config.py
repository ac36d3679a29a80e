"""GPTConfig, presets and config precedence."""

from __future__ import annotations

import pytest

from gptbench.backends.spec import GPTConfig
from gptbench.errors import ConfigError
from gptbench.spec import PRESETS, TrainConfig
from gptbench.spec.toml import load_toml
from helpers import resolve_config as resolve_run_config


def test_gpt2_124m_parameter_count():
    cfg = PRESETS["gpt2"].model.replace(vocab_size=50257)
    assert cfg.num_params() == 124_439_808  # the published GPT-2 small count (tied head)
    b = cfg.param_breakdown()
    assert b["token_embeddings"] == 50257 * 768
    assert b["position_embeddings"] == 1024 * 768
    assert b["lm_head"] == 0


@pytest.mark.parametrize("preset,expected", [("gpt2-medium", 354_823_168), ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200)])
def test_larger_gpt2_counts(preset, expected):
    assert PRESETS[preset].model.replace(vocab_size=50257).num_params() == expected


def test_tiny_preset_is_nanogpt_cpu_config():
    cfg = resolve_run_config("tiny")
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, cfg.model.block_size) == (4, 4, 128, 64)
    t = cfg.train
    assert (t.batch_size, t.lr, t.min_lr, t.warmup_iters, t.beta2, cfg.model.dropout) == (12, 1e-3, 1e-4, 100, 0.99, 0.0)
    assert t.lr_decay_iters == t.max_iters == 2000


def test_small_preset_is_nanogpt_shakespeare_char():
    cfg = resolve_run_config("small")
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.block_size, cfg.model.dropout) == (6, 384, 256, 0.2)
    assert cfg.train.batch_size == 64


def test_variant_shapes():
    sw = GPTConfig(vocab_size=10, n_embd=96, n_head=4, mlp="swiglu", tie_embeddings=False, norm="rmsnorm", bias=False)
    shapes = sw.canonical_shapes()
    assert shapes["h.0.mlp.c_gate.weight"] == (256, 96)  # 8/3 * 96 = 256
    assert "lm_head.weight" in shapes
    assert "ln_f.bias" not in shapes
    assert "h.0.attn.c_attn.bias" not in shapes


def test_precedence_defaults_preset_toml_flags(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('preset = "small"\ndata = "x.txt"\n[model]\nn_layer = 3\n[train]\nlr = 5e-4\nmax_iters = 10\n')
    cfg = resolve_run_config(None, load_toml(f), {"n_layer": 2}, {"max_iters": 20}, {"data": None})
    assert cfg.preset == "small"
    assert cfg.model.n_layer == 2  # flag beats toml
    assert cfg.model.n_embd == 384  # preset beats default
    assert cfg.train.lr == 5e-4  # toml beats preset
    assert cfg.train.max_iters == 20
    assert cfg.train.lr_decay_iters == 20
    assert cfg.data == "x.txt"  # None flags do not override


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(preset="huge"), "unknown preset 'huge'"),
        (dict(model_flags={"n_embd": 130, "n_head": 4}), "n_embd (130) must be divisible by n_head (4)"),
        (dict(train_flags={"lr": 0.0}), "lr must be positive"),
        (dict(train_flags={"lr": -1.0}), "lr must be positive"),
        (dict(train_flags={"max_iters": 0}), "max-iters must be a positive integer"),
        (dict(train_flags={"batch_size": -4}), "batch-size must be a positive integer"),
        (dict(model_flags={"norm": "batchnorm"}), "unknown norm 'batchnorm'"),
        (dict(model_flags={"wat": 1}), "unknown model key(s): wat"),
        (dict(model_flags={"pos": "alibi"}), "unknown pos 'alibi'; choose one of learned, rope"),
        (dict(model_flags={"pos": "rope", "n_embd": 132, "n_head": 4}), "head size n_embd/n_head (33) must be even"),
        (dict(model_flags={"rope_theta": 1.0}), "rope_theta must be greater than 1"),
        (dict(model_flags={"logit_softcap": -1.0}), "logit_softcap must be >= 0 (0 = off)"),
        (dict(model_flags={"qk_norm": "yes"}), "qk_norm must be true or false"),
        (dict(train_flags={"optimizer": "sgd"}), "unknown optimizer 'sgd'; choose one of adamw, muon"),
        (dict(train_flags={"optimizer": 1}), "optimizer must be a string"),
        (dict(train_flags={"muon_lr": 0.0}), "muon-lr must be positive"),
        (dict(train_flags={"muon_momentum": 1.0}), "muon-momentum must be in [0, 1)"),
        (dict(train_flags={"muon_momentum_warmup": -1}), "muon-momentum-warmup must be >= 0"),
        (dict(train_flags={"muon_weight_decay": -0.1}), "muon-weight-decay must be >= 0"),
    ],
)
def test_bad_config_messages(kwargs, message):
    with pytest.raises(ConfigError) as exc:
        resolve_run_config(**kwargs)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_unknown_keys_rejected_everywhere(tmp_path):
    with pytest.raises(ConfigError, match="unknown model config key"):
        GPTConfig.from_dict({"n_layers": 3})
    with pytest.raises(ConfigError, match="unknown train config key"):
        TrainConfig.from_dict({"learning_rate": 3})
    f = tmp_path / "bad.toml"
    f.write_text("[train]\nlearning_rate = 1\n")
    with pytest.raises(ConfigError, match=r"unknown \[train\] key\(s\): learning_rate"):
        load_toml(f)


def test_flops_per_token_formula():
    cfg = GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, bias=False)
    n = cfg.num_params(non_embedding=True)
    assert cfg.flops_per_token() == 6 * n + 12 * 4 * 4 * 32 * 64


def test_new_fields_default_to_todays_model_and_adamw():
    """Runs and weights files written before the recipe existed (no such keys) load as the
    GPT-2 model and AdamW they were."""
    cfg = GPTConfig.from_dict({"vocab_size": 65, "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16})
    assert (cfg.pos, cfg.qk_norm, cfg.logit_softcap, cfg.zero_init_proj) == ("learned", False, 0.0, False)
    assert "wpe.weight" in cfg.canonical_shapes()
    t = TrainConfig.from_dict({"lr": 1e-3})
    assert t.optimizer == "adamw"
    assert t.optim_config().muon is None


@pytest.mark.parametrize("preset", ["modern", "modern-small"])
def test_modern_presets_are_todays_recipe(preset):
    """Both presets build today's recipe; the CPU one keeps `tiny`'s char-level scale."""
    cfg = resolve_run_config(preset)
    m = cfg.model_config(65)
    assert m.pos == "rope"
    assert m.qk_norm
    assert m.mlp == "relu2"
    assert m.zero_init_proj
    assert m.logit_softcap > 0
    assert not m.tie_embeddings
    assert "wpe.weight" not in m.canonical_shapes()
    assert cfg.train.optimizer == "muon"
    muon = cfg.train.optim_config().muon
    assert muon.lr_ratio == pytest.approx(cfg.train.muon_lr / cfg.train.lr)
    assert cfg.train.lr_decay_iters == cfg.train.max_iters
    if preset == "modern":
        tiny = resolve_run_config("tiny")
        assert m.block_size == tiny.model.block_size  # the same task as `tiny`: same context
        assert cfg.train.max_iters < tiny.train.max_iters


def test_recipe_keys_in_toml_and_flags(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('[model]\npos = "rope"\nqk_norm = true\nlogit_softcap = 30.0\n[train]\noptimizer = "muon"\nmuon_lr = 0.05\n')
    cfg = resolve_run_config(None, load_toml(f), {"rope_theta": 500.0}, {"muon_momentum": 0.9})
    assert (cfg.model.pos, cfg.model.qk_norm, cfg.model.logit_softcap, cfg.model.rope_theta) == ("rope", True, 30.0, 500.0)
    assert (cfg.train.optimizer, cfg.train.muon_lr, cfg.train.muon_momentum) == ("muon", 0.05, 0.9)


def test_recipe_switches_survive_the_ui_launch(tmp_path):
    """`gptbench train` with the UI relaunches itself headless with the same spec."""
    from gptbench.cli import build_parser
    from gptbench.spec.cli import request_argv, request_from_args

    argv = ["train", "--name", "r1", "--pos", "rope", "--qk-norm", "--no-zero-init", "--logit-softcap", "15",
            "--optimizer", "muon", "--muon-lr", "0.03"]
    spec = request_from_args(build_parser().parse_args(argv))
    again = request_from_args(build_parser().parse_args(["train", "--no-ui", *request_argv(spec)]))
    assert again == spec
    assert (again.model.pos, again.model.qk_norm, again.model.zero_init_proj, again.model.logit_softcap) == ("rope", True, False, 15.0)
    assert (again.train.optimizer, again.train.muon_lr) == ("muon", 0.03)
    assert build_parser().parse_args(["train"]).qk_norm is None  # unset: the preset decides
