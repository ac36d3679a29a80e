"""The continuous-batching scheduler on both backends: rows that join and leave a running batch
each get exactly what the generation engine gives them alone (greedy, and seeded sampling),
log-probabilities equal a float64 numpy reference, and cancelled rows leave at once."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from gptbench.backends.generate import generate
from gptbench.backends.sampling import SamplingParams
from gptbench.loading import load_model
from gptbench.runstore import RunStore
from gptbench.serving.scheduler import Event, Job, Scheduler

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["ROMEO: line", "JULIET: and so", "a", "the king to the queen.\n", "said the cat", "JU", "line 3", "\n\n"]


class Collector:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.done = threading.Event()

    def __call__(self, ev: Event) -> None:
        self.events.append(ev)
        if ev.finish_reason is not None:
            self.done.set()

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events)

    @property
    def tokens(self) -> list[int]:
        return [e.token for e in self.events if e.token is not None]


@pytest.fixture(scope="module", params=["torch", "mlx"])
def model(request, trained_run):
    return load_model(RunStore(trained_run.path.parent), run=trained_run.name, backend=request.param, device="cpu")


def run_jobs(model, specs, *, max_batch=16, stagger=True):
    """Submit jobs (prompt, params) while the batch runs: each next job joins after the
    previous one has produced a token, so rows join and leave mid-batch."""
    sched = Scheduler(model.backend, model.tokenizer, max_batch=max_batch)
    sched.start()
    out = []
    try:
        for prompt, params in specs:
            c = Collector()
            first = threading.Event()

            def emit(ev, c=c, first=first):
                c(ev)
                first.set()

            assert sched.submit([Job(model.tokenizer.encode(prompt), params, emit, logprobs=2)])
            out.append(c)
            if stagger:
                assert first.wait(60)
        for c in out:
            assert c.done.wait(60)
    finally:
        sched.stop()
    return out, sched


def test_rows_joining_and_leaving_get_what_they_get_alone_greedy(model):
    specs = [(p, SamplingParams(temperature=0, max_new_tokens=4 + i)) for i, p in enumerate(PROMPTS)]
    got, sched = run_jobs(model, specs)
    assert sched.stats.peak_batch >= 3  # they really shared decode steps
    for c, (prompt, params) in zip(got, specs):
        alone = generate(model.backend, model.tokenizer, prompt, params)
        assert c.tokens == alone.tokens
        assert c.text == alone.text
        assert c.events[-1].finish_reason == alone.finish_reason


def test_seeded_sampling_rows_draw_what_they_draw_alone(model):
    specs = [(p, SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=10, seed=100 + i)) for i, p in enumerate(PROMPTS[:5])]
    got, _ = run_jobs(model, specs)
    for c, (prompt, params) in zip(got, specs):
        assert c.tokens == generate(model.backend, model.tokenizer, prompt, params).tokens


def test_logprobs_equal_a_float64_reference(model):
    from reference_model import reference_logits

    params = SamplingParams(temperature=0, max_new_tokens=5)
    (c,), _ = run_jobs(model, [("ROMEO:", params)])
    cfg, tensors = model.backend.config, model.backend.get_weights()
    ids = model.tokenizer.encode("ROMEO:") + c.tokens
    ref = reference_logits(cfg, tensors, np.asarray([ids]))[0].astype(np.float64)
    ref = ref - ref.max(axis=-1, keepdims=True)
    ref = ref - np.log(np.exp(ref).sum(axis=-1, keepdims=True))
    n = len(model.tokenizer.encode("ROMEO:"))
    for i, ev in enumerate(c.events):
        assert ev.logprob.logprob == pytest.approx(ref[n - 1 + i, ev.token], abs=1e-4)
        assert len(ev.logprob.top) <= 2 and max(ev.logprob.top.values()) == pytest.approx(ref[n - 1 + i].max(), abs=1e-4)


def test_a_cancelled_row_leaves_the_batch_and_the_others_go_on(model):
    sched = Scheduler(model.backend, model.tokenizer)
    sched.start()
    try:
        long, short = Collector(), Collector()
        gate = threading.Event()
        job = Job(model.tokenizer.encode("ROMEO:"), SamplingParams(temperature=0, max_new_tokens=25),
                  lambda ev: (long(ev), gate.set()))
        assert sched.submit([job])
        assert gate.wait(60)
        job.cancel.set()
        assert sched.submit([Job(model.tokenizer.encode("JULIET:"), SamplingParams(temperature=0, max_new_tokens=6), short)])
        assert short.done.wait(60)
        assert len(long.tokens) < 25 and not long.done.is_set()  # it left without finishing
        assert short.tokens == generate(model.backend, model.tokenizer, "JULIET:", SamplingParams(temperature=0, max_new_tokens=6)).tokens
        deadline = time.monotonic() + 60  # the stats update right after the last event: catches a hang only
        while sched.stats.active:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        sched.stop()


def test_a_full_queue_refuses_and_stop_aborts_what_is_left(model):
    sched = Scheduler(model.backend, model.tokenizer, max_queue=2)  # not started: nothing drains the queue
    a, b = Collector(), Collector()
    params = SamplingParams(temperature=0, max_new_tokens=3)
    assert sched.submit([Job([1], params, a), Job([2], params, b)])
    assert not sched.submit([Job([3], params, Collector())])
    sched.stop()
    sched._end_all("abort")
    assert a.events[-1].finish_reason == "abort" and b.events[-1].finish_reason == "abort"
