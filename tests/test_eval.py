"""Evaluation scoring: log-likelihoods against a float64 reference on both backends,
lm-evaluation-harness's encoding and truncation, few-shot draws, the JSONL format and the
hub-task converters (on local files shaped like the hub datasets)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import GPT2_RANKS, tiny_model_config
from reference_model import reference_logits

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ITEMS = [
    {"context": "the cat sat on the", "choices": [" mat", " moon and the stars", " dog"], "answer": 0},
    {"context": "one two three ", "choices": ["four", "five six"], "answer": 1},
    {"context": "", "choices": ["hello", "hi there"], "answer": 0},
    {"context": "x y " * 20, "choices": [" y", " zz"], "answer": 1},  # longer than the block: cut from the left
]


@pytest.fixture(scope="module")
def models():
    """The same random weights on torch and on MLX, with GPT-2's tokenizer."""
    from gptbench.backends.registry import create_backend
    from gptbench.tokenizers.registry import load_tokenizer_spec

    tok = load_tokenizer_spec(f"gpt2:{GPT2_RANKS}")
    cfg = tiny_model_config(vocab_size=tok.vocab_size, block_size=16)
    torch_be = create_backend(cfg, "torch", device="cpu", seed=3)
    weights = torch_be.get_weights()
    mlx_be = create_backend(cfg, "mlx", device="cpu", seed=3)
    mlx_be.set_weights(weights)
    return {"torch": torch_be, "mlx": mlx_be}, weights, cfg, tok


def reference_loglik(cfg, weights, tok, context: str, continuation: str) -> tuple[float, bool]:
    """Written from lm-evaluation-harness's rules: trailing context whitespace joins the
    continuation, the whole is split at the context's encoding, an empty context is
    end-of-text, and the last block_size + 1 tokens are kept; float64 logits."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    ctx = tok.encode(context) if context else [tok.eot_id]
    cont = tok.encode(context + continuation)[len(ctx):] if context else tok.encode(continuation)
    whole = (ctx + cont)[-(cfg.block_size + 1):]
    logits = reference_logits(cfg, weights, np.array([whole[:-1]]))[0]
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    total = sum(logp[len(whole) - 1 - len(cont) + k, t] for k, t in enumerate(cont))
    return float(total), len(ctx) + len(cont) > cfg.block_size + 1


def make_task(items=ITEMS, name="mc:test"):
    from gptbench.evaluation.items import Task, check_item

    return Task(name, "mc", tuple(check_item(obj, f"item {i}") for i, obj in enumerate(items)))


@pytest.mark.parametrize("backend", ["torch", "mlx"])
@pytest.mark.parametrize("max_rows, share", [(1, True), (3, True), (32, True), (32, False)])
def test_logliks_match_a_float64_reference(models, backend, max_rows, share):
    from gptbench.evaluation.runner import EvalOptions, evaluate

    bes, weights, cfg, tok = models
    result = evaluate(bes[backend], tok, make_task(), EvalOptions(max_rows=max_rows, share_context=share))
    truncated = 0
    for item, score in zip(ITEMS, result.items):
        refs = [reference_loglik(cfg, weights, tok, item["context"], c) for c in item["choices"]]
        np.testing.assert_allclose(score.logliks, [r[0] for r in refs], rtol=0, atol=1e-4)
        assert score.truncated == any(r[1] for r in refs)
        truncated += score.truncated
    assert truncated == result.truncated == 1
    ref_acc = np.mean([int(np.argmax(s.logliks)) == it["answer"] for s, it in zip(result.items, ITEMS)])
    norm = [int(np.argmax(np.array(s.logliks) / [len(c) for c in it["choices"]])) for s, it in zip(result.items, ITEMS)]
    assert result.acc == ref_acc
    assert result.acc_norm == np.mean([p == it["answer"] for p, it in zip(norm, ITEMS)])


def test_an_items_choices_share_one_row_after_its_context(models):
    """The plan: one packed row per untruncated item (the context once), a plain row per
    choice of the item that needs a cut; packing off, one row per choice."""
    from gptbench.evaluation.runner import encode_task
    from gptbench.evaluation.scoring import plan_rows

    _, _, cfg, tok = models
    requests = [r for reqs in encode_task(make_task(), tok, 0, 0, cfg.block_size) for r in reqs]
    shared = plan_rows(requests, cfg.block_size, share=True)
    assert [len(r.spans) for r in shared] == [1, 1, 3, 2, 2]  # item 4 is cut: its choices alone
    assert sorted(i for r in shared for i, _, _ in r.spans) == list(range(len(requests)))
    unshared = plan_rows(requests, cfg.block_size, share=False)
    assert len(unshared) == len(requests)
    assert sum(len(r.tokens) for r in shared) < sum(len(r.tokens) for r in unshared)
    ctx = requests[0].context  # "the cat sat on the": its tokens appear once in the packed row
    row = next(r for r in shared if len(r.spans) == 3)
    assert row.tokens[: len(ctx) - 1] == ctx[:-1] and row.tokens.count(ctx[-1]) >= 3


@pytest.mark.parametrize("backend", ["torch", "mlx"])
@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_packed_rows_equal_unshared_rows(backend, pos):
    """Several continuations after one context in one row give each continuation the
    log-probabilities of its own unshared row (learned and rotary positions)."""
    from gptbench.backends.registry import create_backend
    from gptbench.evaluation.scoring import Request, score_requests

    cfg = tiny_model_config(block_size=24, pos=pos)
    be = create_backend(cfg, backend, device="cpu", seed=5)
    rng = np.random.default_rng(1)
    requests = []
    for n_ctx in (1, 7, 15):  # a one-token context (end-of-text) too
        ctx = tuple(int(t) for t in rng.integers(0, cfg.vocab_size, n_ctx))
        requests += [Request(ctx, tuple(int(t) for t in rng.integers(0, cfg.vocab_size, n))) for n in (1, 4, 9, 11)]
    shared = score_requests(be.token_logprobs, requests, cfg.block_size, share=True, max_rows=2)
    unshared = score_requests(be.token_logprobs, requests, cfg.block_size, share=False)
    np.testing.assert_allclose([s.loglik for s in shared], [s.loglik for s in unshared], rtol=0, atol=1e-4)
    assert [s.truncated for s in shared] == [s.truncated for s in unshared]


def test_token_logprobs_default_equals_the_backends(models):
    """The contract's numpy default (through forward_logits) and each backend's own."""
    from gptbench.backends.base import TrainingBackend

    bes, _, cfg, _ = models
    rng = np.random.default_rng(0)
    idx = rng.integers(0, cfg.vocab_size, (3, cfg.block_size))
    targets = rng.integers(-1, cfg.vocab_size, (3, cfg.block_size))
    for be in bes.values():
        np.testing.assert_allclose(be.token_logprobs(idx, targets), TrainingBackend.token_logprobs(be, idx, targets), atol=1e-5)
        assert (be.token_logprobs(idx, targets)[targets < 0] == 0).all()


def test_bpb_matches_a_float64_reference(models):
    from gptbench.evaluation.items import Task
    from gptbench.evaluation.runner import evaluate

    bes, weights, cfg, tok = models
    text = "to be or not to be, that is the question; " * 3  # 39 tokens: three windows of 16
    ids = [tok.eot_id, *tok.encode(text)]
    total = 0.0
    for s in range(0, len(ids) - 1, cfg.block_size):
        chunk = ids[s: s + cfg.block_size + 1]
        logits = reference_logits(cfg, weights, np.array([chunk[:-1]]))[0]
        top = logits.max(-1, keepdims=True)
        logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
        total += sum(logp[k, t] for k, t in enumerate(chunk[1:]))
    expected = -total / (np.log(2) * len(text.encode()))
    for be in bes.values():
        got = evaluate(be, tok, Task("bpb:t", "bpb", text=text))
        assert got.n == len(ids) - 1
        assert got.bpb == pytest.approx(expected, abs=1e-5)


def test_fewshot_is_seeded_per_item_and_never_uses_the_item():
    items = [{"context": f"q{i}:", "choices": [f" a{i}", f" b{i}"], "answer": i % 2} for i in range(20)]
    task = make_task(items)
    a, b = task.prompts(3, seed=7), task.prompts(3, seed=7)
    assert a == b
    assert a != task.prompts(3, seed=8)
    for i, item in enumerate(a):
        context = item.contexts[0]
        assert context.endswith(f"q{i}:") and context.count("\n\n") == 3
        assert f"q{i}:" not in context[: -len(f"q{i}:")]  # never its own example
        for example in context.split("\n\n")[:-1]:
            j = int(example[1: example.index(":")])
            assert example == f"q{j}: {'ab'[j % 2]}{j}"  # an example is context + right continuation
    assert task.limited(5).prompts(3, seed=7) == a[:5]  # --limit does not change an item's prompt


def test_truncation_is_counted_and_refuses_an_overlong_continuation(models):
    from gptbench.errors import UserError
    from gptbench.evaluation.runner import evaluate

    bes, _, _, tok = models
    long_ctx = make_task([{"context": "a b " * 20, "choices": [" b", " c"], "answer": 0}] * 3)
    assert evaluate(bes["torch"], tok, long_ctx).truncated == 3
    with pytest.raises(UserError, match="item 1: .*longer than the model's block size"):
        evaluate(bes["torch"], tok, make_task([{"context": "a", "choices": [" b" * 20, " c"], "answer": 0}]))


@pytest.mark.parametrize("line, needle", [
    ('{"context": "a", "choices": [], "answer": 0}', "at least 2"),
    ('{"context": "a", "choices": ["x", "y"], "answer": 2}', "answer"),
    ('{"context": "a", "choices": ["x", ""], "answer": 0}', "choice 1 is empty"),
    ('{"context": 3, "choices": ["x", "y"], "answer": 0}', "context"),
    ('{"context": "a", "choices": ["x", "y"], "answer": true}', "answer"),
    ('{"context": "a", "choices": ["x", "y"], "answer": 0, "extra": 1}', "unknown key"),
    ('["a"]', "JSON object"),
    ('{"context": "a", ', "not JSON"),
])
def test_jsonl_format_refuses_a_bad_item_naming_file_and_line(tmp_path, line, needle):
    from gptbench.errors import UserError
    from gptbench.evaluation.items import load_jsonl_items

    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps(ITEMS[0]) + "\n\n" + line + "\n")
    with pytest.raises(UserError, match=needle) as err:
        load_jsonl_items(path)
    assert f"{path} line 3" in str(err.value)


def test_jsonl_items_keep_continuations_as_given(tmp_path):
    from gptbench.evaluation.items import load_jsonl_items

    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in ITEMS))
    items = load_jsonl_items(path)
    assert items[0].contexts == ("the cat sat on the",) * 3
    assert items[0].continuations == (" mat", " moon and the stars", " dog")
    assert items[0].lengths == (4, 19, 4) and items[1].answer == 1


HUB_ROWS = {
    "hellaswag": {"ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow.",
                  "ctx_b": "then", "ctx": "", "endings": [", the man [header] continues.", " he stops."], "source_id": "x",
                  "split": "val", "split_type": "indomain", "label": "1"},
    "arc_easy": {"id": "q1", "question": "Which is a gas?", "choices": {"text": ["ice", "steam", "rock"], "label": ["A", "B", "C"]}, "answerKey": "B"},
    "piqa": {"goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat the lid", "label": 0},
    "winogrande": {"sentence": "The trophy did not fit in the case because the _ was too big.", "option1": "trophy", "option2": "case", "answer": "1"},
    "mmlu": {"question": " What is 2+2? ", "subject": "high_school_math", "choices": ["3", "4", "5", "6"], "answer": 1},
}


@pytest.mark.parametrize("name", sorted(HUB_ROWS))
def test_hub_loaders_shape_items_as_lm_eval_does(tmp_path, name):
    from gptbench.evaluation.hub import load_hub_items

    path = tmp_path / f"{name}.jsonl"
    path.write_text(json.dumps(HUB_ROWS[name]) + "\n")
    (item,) = load_hub_items(name, data_files=str(path))
    expected = {
        "hellaswag": (("Removing ice from car: Then, the man writes over the snow. Then",) * 2,
                      (" , the man continues.", " he stops."), 1, (20, 9)),
        "arc_easy": (("Question: Which is a gas?\nAnswer:",) * 3, (" ice", " steam", " rock"), 1, (3, 5, 4)),
        "piqa": (("Question: Open a jar\nAnswer:",) * 2, (" twist the lid", " eat the lid"), 0, (13, 11)),
        "winogrande": (("The trophy did not fit in the case because the trophy", "The trophy did not fit in the case because the case"),
                       (" was too big.",) * 2, 0, (6, 4)),
        "mmlu": (("The following are multiple choice questions (with answers) about high school math.\n\n"
                  "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:",) * 4, (" A", " B", " C", " D"), 1, (1, 1, 1, 1)),
    }[name]
    assert (item.contexts, item.continuations, item.answer, item.lengths) == expected


def test_a_hub_row_of_another_shape_is_one_line(tmp_path):
    from gptbench.errors import UserError
    from gptbench.evaluation.hub import load_hub_items

    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(UserError, match="task piqa: row 1 of the dataset is not shaped as expected"):
        load_hub_items("piqa", data_files=str(path))


def test_core_centres_each_task_on_chance():
    from gptbench.evaluation.results import ItemScore, TaskResult, core_score

    four = TaskResult.from_items("a", [ItemScore(i, 0, (0.0, -1.0, -1.0, -1.0) if i < 2 else (-1.0, 0.0, -1.0, -1.0), (1,) * 4, False) for i in range(4)], 0)
    two = TaskResult.from_items("b", [ItemScore(0, 0, (0.0, -1.0), (1, 1), False)], 0)
    assert four.acc == 0.5 and four.centered == pytest.approx((0.5 - 0.25) / 0.75)
    assert two.centered == 1.0
    assert core_score([four, two, TaskResult("t", "bpb", 10, bpb=1.0)]) == pytest.approx(((0.5 - 0.25) / 0.75 + 1.0) / 2)


def test_a_hub_task_offline_is_one_line_naming_the_pinned_dataset(tmp_path, monkeypatch):
    """Offline with nothing cached: the dataset, its pinned revision and the way out, in one line."""
    import datasets

    from gptbench.errors import UserError
    from gptbench.evaluation.hub import HUB_TASKS, load_hub_items

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError) as err:
        load_hub_items("arc_easy")
    message = str(err.value)
    assert "\n" not in message
    assert "allenai/ai2_arc (ARC-Easy) at revision 210d026" in message and "mc:FILE.jsonl" in message
    assert all(len(t.revision) == 40 for t in HUB_TASKS.values())  # every dataset pinned to a commit
