"""`gptbench serve` through the real `openai` client and raw HTTP, on 127.0.0.1 and a free port:
completions equal to the generation engine alone (greedy, seeded, stop strings, n > 1), 16
concurrent streams each equal to their text alone, log-probabilities (lm-evaluation-harness'
echo requests) against a float64 reference, every bad request as OpenAI's error object,
429 on a full queue, a disconnect freeing its row, and SIGTERM/SIGINT exiting 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import openai
import pytest

from helpers import assert_one_line, run_cli_output, tiny_model_config
from reference_model import perturbed_weights, reference_logits
from gptbench.backends.generate import generate
from gptbench.backends.sampling import SamplingParams
from gptbench.backends.weights import save_weights
from gptbench.cli import main
from gptbench.loading import load_model
from gptbench.runstore import RunStore
from gptbench.serving.app import ChatFormat, ServeState, create_app
from gptbench.serving.protocol import Limits
from gptbench.serving.scheduler import Scheduler
from gptbench.serving.server import BackgroundServer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BLOCK = 512


@pytest.fixture(scope="module")
def served_runs(tmp_path_factory):
    """A run of a small random byte-level model (no end-of-text: rows end only on length or stop)."""
    tmp = tmp_path_factory.mktemp("serve")
    cfg = tiny_model_config(vocab_size=256, block_size=BLOCK, tie_embeddings=True)
    save_weights(tmp / "w.safetensors", cfg, perturbed_weights(cfg, seed=3, scale=1.0))
    runs = tmp / "runs"
    assert main(["--runs-dir", str(runs), "convert", str(tmp / "w.safetensors"), "tiny", "--to", "torch", "--tokenizer", "byte"]) == 0
    return runs


@pytest.fixture(scope="module")
def loaded(served_runs):
    return load_model(RunStore(served_runs), run="tiny", backend="torch", device="cpu")


def start(loaded, **kw) -> tuple[BackgroundServer, ServeState]:
    limits = kw.pop("limits", Limits())
    sched = Scheduler(loaded.backend, loaded.tokenizer, max_batch=kw.pop("max_batch", 16), max_queue=kw.pop("max_queue", 64))
    state = ServeState(sched, loaded.tokenizer, "tiny", BLOCK, 256, limits, **kw)
    return BackgroundServer(create_app(state)).start(), state


@pytest.fixture(scope="module")
def server(loaded):
    srv, state = start(loaded)
    try:
        yield srv, state
    finally:
        srv.stop()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0].url + "/v1", api_key="unused", max_retries=0, timeout=120)


def alone(loaded, prompt, **params) -> str:
    return generate(loaded.backend, loaded.tokenizer, prompt, SamplingParams(**{"temperature": 0, **params})).text


def test_models_and_a_greedy_completion_with_usage(client, loaded):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    r = client.completions.create(model="tiny", prompt="Hello there", max_tokens=20, temperature=0)
    assert r.choices[0].text == alone(loaded, "Hello there", max_new_tokens=20)
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (11, 20, 31)
    ids = r.usage and list(b"Hello there")
    r2 = client.completions.create(model="tiny", prompt=ids, max_tokens=20, temperature=0)  # a token-id prompt
    assert r2.choices[0].text == r.choices[0].text


def test_sixteen_concurrent_streams_each_get_their_text_alone(client, loaded, server):
    prompts = [f"client {i}: " + "abc"[: i % 3] for i in range(16)]
    want = [alone(loaded, p, max_new_tokens=40 + i) for i, p in enumerate(prompts)]
    got: list[str | None] = [None] * 16
    barrier = threading.Barrier(16)

    def one(i: int) -> None:
        barrier.wait()
        parts, reasons = [], []
        for chunk in client.completions.create(model="tiny", prompt=prompts[i], max_tokens=40 + i, temperature=0, stream=True):
            parts.append(chunk.choices[0].text)
            reasons.append(chunk.choices[0].finish_reason)
        assert reasons[-1] == "length" and set(reasons[:-1]) <= {None}
        got[i] = "".join(parts)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert got == want
    assert server[1].scheduler.stats.peak_batch > 1  # they shared decode steps


def test_stop_strings_seeds_and_n(client, loaded):
    full = alone(loaded, "x", max_new_tokens=30)
    stop = full[10:13]
    r = client.completions.create(model="tiny", prompt="x", max_tokens=30, temperature=0, stop=[stop])
    assert r.choices[0].text == full[: full.index(stop)] and r.choices[0].finish_reason == "stop"
    a = client.completions.create(model="tiny", prompt="x", max_tokens=12, temperature=1.0, seed=7, n=3)
    b = client.completions.create(model="tiny", prompt="x", max_tokens=12, temperature=1.0, seed=7, n=3)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    for i, c in enumerate(a.choices):  # choice i samples with seed + i, as `gptbench sample --seed` would
        assert c.index == i
        assert c.text == alone(loaded, "x", max_new_tokens=12, temperature=1.0, seed=7 + i)
    assert a.usage.completion_tokens == 36


def test_echo_logprobs_serve_lm_eval_loglikelihood(client, loaded):
    ids = list(b"ROMEO: hello")
    r = client.completions.create(model="tiny", prompt=ids, max_tokens=0, echo=True, logprobs=1, temperature=0)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == "ROMEO: hello"
    assert lp.tokens == [chr(b) for b in ids]
    assert lp.token_logprobs[0] is None
    ref = reference_logits(loaded.backend.config, loaded.backend.get_weights(), np.asarray([ids]))[0].astype(np.float64)
    ref = ref - ref.max(-1, keepdims=True)
    ref = ref - np.log(np.exp(ref).sum(-1, keepdims=True))
    np.testing.assert_allclose(lp.token_logprobs[1:], [ref[i - 1, ids[i]] for i in range(1, len(ids))], atol=1e-4)
    for i in range(1, len(ids)):  # the one alternative is the most likely token (lm-eval's is_greedy)
        assert list(lp.top_logprobs[i].values())[0] == pytest.approx(ref[i - 1].max(), abs=1e-4)
    g = client.completions.create(model="tiny", prompt="ROMEO: hello", max_tokens=3, logprobs=2, temperature=0)
    assert len(g.choices[0].logprobs.token_logprobs) == 3 and all(len(t) == 2 for t in g.choices[0].logprobs.top_logprobs)


def test_several_prompts_in_one_request_as_lm_eval_batches_them(client, loaded):
    a, b = list(b"ROMEO: hi"), list(b"JULIET")
    both = client.completions.create(model="tiny", prompt=[a, b], max_tokens=0, echo=True, logprobs=1, temperature=0)
    assert [c.index for c in both.choices] == [0, 1]
    for ids, choice in zip((a, b), both.choices):
        one = client.completions.create(model="tiny", prompt=ids, max_tokens=0, echo=True, logprobs=1, temperature=0)
        assert choice.text == bytes(ids).decode() and choice.logprobs.token_logprobs == one.choices[0].logprobs.token_logprobs
    assert both.usage.prompt_tokens == len(a) + len(b)
    r = client.completions.create(model="tiny", prompt=["x", "yz"], max_tokens=4, temperature=0, n=2)
    x, yz = alone(loaded, "x", max_new_tokens=4), alone(loaded, "yz", max_new_tokens=4)
    assert [c.text for c in r.choices] == [x, x, yz, yz]  # prompt p's i-th choice is index p * n + i


def test_chat_on_a_base_run_is_a_clear_400(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert exc.value.body["code"] == "no_chat_template" and "/v1/completions" in exc.value.body["message"]


BAD = [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (json.dumps({"prompt": "x", "temperature": "hot"}), 400, "temperature"),
    (json.dumps({"prompt": "x", "temperature": 3}), 400, "temperature"),
    (json.dumps({"prompt": "x", "top_p": 1.5}), 400, "top_p"),
    (json.dumps({"prompt": "x", "max_tokens": -1}), 400, "max_tokens"),
    (json.dumps({"prompt": "x", "max_tokens": BLOCK}), 400, "max_tokens"),
    (json.dumps({"prompt": "x", "n": 100}), 400, "n"),
    (json.dumps({"prompt": "x", "n": True}), 400, "n"),
    (json.dumps({"prompt": "x", "logprobs": 9}), 400, "logprobs"),
    (json.dumps({"prompt": "x", "stop": [1]}), 400, "stop"),
    (json.dumps({"prompt": "x", "stream": "yes"}), 400, "stream"),
    (json.dumps({"prompt": "x", "presence_penalty": 1}), 400, "presence_penalty"),
    (json.dumps({"prompt": []}), 400, "prompt"),
    (json.dumps({"prompt": [["a"]]}), 400, "prompt"),
    (json.dumps({"prompt": ["x"] * 65}), 400, "prompt"),
    (json.dumps({"prompt": [1, 999]}), 400, "prompt"),
    (json.dumps({"prompt": "x" * (BLOCK + 1)}), 400, "prompt"),
    (json.dumps({"prompt": "x", "model": "gpt-4"}), 404, "model"),
    (json.dumps({"prompt": "x" * (2 << 20)}), 413, None),
]


@pytest.mark.parametrize("body, status, param", BAD)
def test_every_bad_request_is_an_openai_error_object(server, body, status, param):
    r = httpx.post(server[0].url + "/v1/completions", content=body, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param
    assert err["message"] and "Traceback" not in r.text


def test_unknown_routes_and_methods_and_bad_chat_bodies(server):
    url = server[0].url
    assert httpx.get(url + "/v1/nothing").json()["error"]["message"].startswith("Not Found")
    assert httpx.get(url + "/v1/completions").status_code == 405
    r = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "robot", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].role"


def test_api_key_is_required_when_set(loaded):
    srv, _ = start(loaded, api_key="s3cret")
    try:
        r = httpx.get(srv.url + "/v1/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(srv.url + "/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = openai.OpenAI(base_url=srv.url + "/v1", api_key="s3cret", max_retries=0)
        assert [m.id for m in ok.models.list().data] == ["tiny"]
    finally:
        srv.stop()


def wait_until(pred, timeout=120.0):
    deadline = time.monotonic() + timeout  # catches a hang only
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class GatedBackend:
    """The real backend, whose forward passes wait while `gate` is closed: the test decides
    when the scheduler may go on, instead of racing it."""

    def __init__(self, backend) -> None:
        self._backend, self.gate = backend, threading.Event()

    def forward_last(self, ids, cache):
        assert self.gate.wait(120)
        return self._backend.forward_last(ids, cache)

    def __getattr__(self, name):
        return getattr(self._backend, name)


class RecordingScheduler(Scheduler):
    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.jobs = []

    def submit(self, jobs):
        ok = super().submit(jobs)
        if ok:
            self.jobs += jobs
        return ok


def test_full_queue_is_429_with_retry_after_and_a_disconnect_frees_its_row(loaded):
    gated = GatedBackend(loaded.backend)
    sched = RecordingScheduler(gated, loaded.tokenizer, max_batch=1, max_queue=1)
    state = ServeState(sched, loaded.tokenizer, "tiny", BLOCK, 256, Limits())
    srv = BackgroundServer(create_app(state)).start()
    stats = sched.stats
    body = {"model": "tiny", "prompt": "x", "max_tokens": BLOCK - 1, "temperature": 0, "stream": True}
    waiter_result = []
    try:
        with httpx.Client(base_url=srv.url, timeout=120) as http:
            with http.stream("POST", "/v1/completions", json=body) as first:
                assert first.status_code == 200
                wait_until(lambda: stats.requests == 1)  # admitted: it holds the only batch row
                waiter = threading.Thread(target=lambda: waiter_result.append(
                    httpx.post(srv.url + "/v1/completions", json={**body, "stream": False, "max_tokens": 5}, timeout=120)))
                waiter.start()
                wait_until(lambda: stats.waiting == 1)
                r = http.post("/v1/completions", json=body)
                assert r.status_code == 429 and r.headers["retry-after"] == "1"
                assert r.json()["error"]["type"] == "rate_limit_error"
            wait_until(lambda: sched.jobs[0].cancel.is_set())  # the client went away: its row is cancelled
            gated.gate.set()
            waiter.join(300)
        assert waiter_result[0].status_code == 200
        assert waiter_result[0].json()["choices"][0]["text"] == alone(loaded, "x", max_new_tokens=5)
        wait_until(lambda: stats.active == 0)
        # one step dropped the disconnected row (it sampled nothing), then five for the waiter alone;
        # had the row stayed it would have run for BLOCK - 1 steps
        assert stats.steps == 6
    finally:
        gated.gate.set()
        srv.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_command_stops_gracefully_on_signals(served_runs, sig):
    env = {**os.environ, "GPTBENCH_RUNS_DIR": str(served_runs)}
    proc = subprocess.Popen([sys.executable, "-m", "gptbench", "serve", "--run", "tiny", "--port", "0", "--backend", "torch",
                             "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "serving tiny@" in line, line + proc.stderr.read()
        url = line.split(" at ")[1].split()[0]
        r = httpx.post(url + "/completions", json={"prompt": "hi", "max_tokens": 4, "temperature": 0}, timeout=60)
        assert r.status_code == 200
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "stopped after 1 requests" in out
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_command_refuses_bad_flags_in_one_line(served_runs, capsys):
    rc, _, err = run_cli_output(capsys, "--runs-dir", served_runs, "serve", "--run", "nope")
    assert rc == 2 and err.startswith("gptbench: error: ") and err.count("\n") == 1
    rc, _, err = run_cli_output(capsys, "--runs-dir", served_runs, "serve", "--run", "tiny", "--port", "70000")
    assert rc == 2
    assert_one_line(err, "--port")


def test_chat_completions_through_a_chat_format_stop_at_its_end_ids(loaded):
    """The chat endpoint over a ChatFormat (a stand-in here; tests/test_serve_chat.py serves a real
    --sft run): its prompt ids, its end-of-turn ids ending the answer, stream and whole alike."""
    prompt = list(b"user: hi\nassistant:")
    full = generate(loaded.backend, loaded.tokenizer, prompt, SamplingParams(temperature=0, max_new_tokens=15)).tokens
    end = full[5]  # the answer's sixth token plays the end-of-turn token
    fmt = ChatFormat(lambda messages: list("".join(f"{m.role}: {m.content}\n" for m in messages).encode()) + list(b"assistant:"),
                     (end,))
    srv, _ = start(loaded, chat=fmt)
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        msgs = [{"role": "user", "content": "hi"}]
        want_ids = full[: full.index(end)]
        want = generate(loaded.backend, loaded.tokenizer, prompt,
                        SamplingParams(temperature=0, max_new_tokens=15, stop_token_ids=(end,))).text
        assert want == loaded.tokenizer.decode(want_ids)
        r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=15, temperature=0, logprobs=True, top_logprobs=2)
        assert r.choices[0].message.content == want and r.choices[0].finish_reason == "stop"
        assert r.object == "chat.completion" and len(r.choices[0].logprobs.content) == len(want_ids) + 1
        assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(prompt), len(want_ids) + 1)
        chunks = list(client.chat.completions.create(model="tiny", messages=msgs, max_tokens=15, temperature=0, stream=True,
                                                     stream_options={"include_usage": True}))
        assert chunks[0].choices[0].delta.role == "assistant"
        assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == want
        assert chunks[-1].usage.completion_tokens == len(want_ids) + 1 and not chunks[-1].choices
    finally:
        srv.stop()
