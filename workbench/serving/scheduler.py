"""The continuous-batching scheduler: one thread runs every forward pass; rows join and leave the batch between tokens.

Requests (`Job`s: one per completion choice) wait in a bounded queue. Between two decode
steps the thread admits waiting jobs up to `max_batch` rows: each is prefilled alone into
its own KV cache, which then joins the batch's (`cache.join`: left-padded to one length,
padded keys masked, so the row sees exactly the context it would see alone). Every step
samples each row with its own `SamplingParams` and RNG (`backend.sample` on that row's
logits, so a seeded row draws what it would draw alone), turns its token into text with
the generation engine's `Row` (UTF-8 assembly, stop strings, end-of-text), then drops the
rows that ended, or whose client went away, from the cache (`cache.select`) and runs one
batched forward for the rest. The HTTP event loop never runs a forward pass: it only
enqueues jobs and receives `Event`s through each job's `emit` callback.

Contexts do not slide here: the server refuses a request whose prompt plus `max_tokens`
exceeds the model's `block_size` (as OpenAI's API refuses past a model's context).
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from gptbench.backends.row_text import Row, end_token_ids
from gptbench.backends.sampling import SamplingParams

if TYPE_CHECKING:
    from gptbench.backends.base import Backend
    from gptbench.tokenizers.base import Tokenizer


@dataclass(frozen=True)
class TokenLogprob:
    """A token's log-probability under the model (raw logits, before temperature) and the
    `top` most likely alternatives at its position (token text -> log-probability)."""

    token: int
    logprob: float | None
    top: dict[str, float] | None


@dataclass(frozen=True)
class Event:
    """What a job reports: prompt log-probabilities (echo), a token and its text, or the end."""

    text: str = ""
    token: int | None = None
    logprob: TokenLogprob | None = None
    prompt_logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None  # eos | stop | length | abort | error, on the last event
    error: str | None = None


@dataclass
class Job:
    """One completion: the prompt ids, how to sample, and where its events go."""

    prompt: list[int]
    params: SamplingParams
    emit: Callable[[Event], None]  # called on the scheduler thread; must not block
    logprobs: int | None = None  # alternatives per token (0..5) when log-probabilities are wanted
    echo_logprobs: bool = False  # also report the prompt's log-probabilities
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Slot:
    job: Job
    row: Row
    generator: Any
    logits: Any  # [1, V] on the backend's device
    n: int = 0


def to_numpy(x: Any) -> np.ndarray:
    """Logits from either backend as float32 numpy (torch tensors from any device)."""
    if hasattr(x, "detach"):
        return x.detach().float().cpu().numpy()
    return np.array(x, dtype=np.float32)


def token_text(tokenizer: "Tokenizer", token: int) -> str:
    """A token as text; a token that is not whole UTF-8 (part of a character) is spelled
    `bytes:\\xNN...`, OpenAI's convention, so distinct tokens keep distinct names."""
    data = tokenizer.decode_bytes([token])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in data)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@dataclass
class SchedulerStats:
    requests: int = 0  # jobs admitted
    active: int = 0  # rows in the batch now
    waiting: int = 0
    steps: int = 0  # batched decode steps run
    peak_batch: int = 0


class Scheduler:
    """Owns the backend for generation; `submit` from any thread, events come back via `emit`."""

    def __init__(self, backend: "Backend", tokenizer: "Tokenizer", *, max_batch: int = 16, max_queue: int = 64) -> None:
        self.backend, self.tokenizer = backend, tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        self.stats = SchedulerStats()
        self._waiting: collections.deque[Job] = collections.deque()
        self._slots: list[_Slot] = []
        self._cache: Any = None
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="gptbench-scheduler", daemon=True)

    # ---- the caller's side ------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, jobs: list[Job]) -> bool:
        """Queue all of `jobs` (one request's choices) or none: False when the queue is full
        or the scheduler is stopping."""
        with self._cond:
            if self._stopping or len(self._waiting) + len(jobs) > self.max_queue:
                return False
            self._waiting.extend(jobs)
            self.stats.waiting = len(self._waiting)
            self._cond.notify()
        return True

    def wake(self) -> None:
        """Let the thread notice a cancelled job now (a client went away while it waited)."""
        with self._cond:
            self._cond.notify()

    def stop(self, timeout: float | None = 30.0) -> None:
        """End every row (`abort`) and the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ---- the thread -------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._waiting and not self._slots:
                    self._cond.wait()
                if self._stopping:
                    break
                room = max(0, self.max_batch - len(self._slots))
                new = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
                self.stats.waiting = len(self._waiting)
            try:
                for job in new:
                    self._admit(job)
                if self._slots:
                    self._step()
            except Exception as exc:  # a backend failure ends the rows it touched, not the server
                self._fail_all(f"{type(exc).__name__}: {exc}")
        self._end_all("abort")

    def _admit(self, job: Job) -> None:
        self.stats.requests += 1
        if job.cancel.is_set():
            return
        if job.echo_logprobs:
            job.emit(Event(prompt_logprobs=self._prompt_logprobs(job)))
        if job.params.max_new_tokens == 0:
            job.emit(Event(finish_reason="length"))
            return
        cache = self.backend.new_cache(None)
        logits = self.backend.forward_last(np.asarray([job.prompt], dtype=np.int64), cache)
        row = Row(self.tokenizer, job.params, end_token_ids(self.tokenizer, job.params))
        self._slots.append(_Slot(job, row, self.backend.make_generator(job.params.seed), logits))
        self._cache = cache if self._cache is None else self._cache.join(cache)

    def _step(self) -> None:
        """Sample every row, end the finished ones, run one batched forward for the rest."""
        keep = []
        for i, slot in enumerate(self._slots):
            if not slot.job.cancel.is_set() and self._advance(slot):
                keep.append(i)
        self.stats.steps += 1
        self.stats.peak_batch = max(self.stats.peak_batch, len(self._slots))
        if len(keep) < len(self._slots):
            self._slots = [self._slots[i] for i in keep]
            self._cache = self._cache.select(keep) if keep else None
        self.stats.active = len(self._slots)
        if self._slots:
            ids = np.asarray([[slot.row.tokens[-1]] for slot in self._slots], dtype=np.int64)
            logits = self.backend.forward_last(ids, self._cache)
            for b, slot in enumerate(self._slots):
                slot.logits = logits[b : b + 1]

    def _advance(self, slot: _Slot) -> bool:
        """Sample one token for `slot` and report it; False once the row has ended."""
        job = slot.job
        token = int(self.backend.sample(slot.logits, job.params, None, slot.generator)[0])
        lp = None
        if job.logprobs is not None:
            lp = self._token_logprob(log_softmax(to_numpy(slot.logits)[0]), token, job.logprobs)
        slot.n += 1
        text = slot.row.push(token)
        if slot.row.finish_reason is None and slot.n >= job.params.max_new_tokens:
            text += slot.row.end("length")
        job.emit(Event(text=text, token=token, logprob=lp, finish_reason=slot.row.finish_reason))
        return slot.row.finish_reason is None

    def _token_logprob(self, logp: np.ndarray, token: int, k: int) -> TokenLogprob:
        top = None
        if k > 0:
            best = np.argsort(-logp, kind="stable")[:k]
            top = {token_text(self.tokenizer, int(t)): float(logp[t]) for t in best}
        return TokenLogprob(token, float(logp[token]), top)

    def _prompt_logprobs(self, job: Job) -> list[TokenLogprob]:
        """Each prompt token's log-probability given the tokens before it (None for the first)."""
        ids = np.asarray([job.prompt], dtype=np.int64)
        logp = log_softmax(np.asarray(self.backend.forward_logits(ids), dtype=np.float32)[0])
        k = job.logprobs or 0
        out = [TokenLogprob(job.prompt[0], None, None)]
        out += [self._token_logprob(logp[i - 1], job.prompt[i], k) for i in range(1, len(job.prompt))]
        return out

    def _end_all(self, reason: str) -> None:
        with self._cond:
            waiting, self._waiting = list(self._waiting), collections.deque()
        for job in [s.job for s in self._slots] + waiting:
            job.emit(Event(finish_reason=reason))
        self._slots, self._cache = [], None
        self.stats.active = 0

    def _fail_all(self, message: str) -> None:
        for slot in self._slots:
            slot.job.emit(Event(finish_reason="error", error=message))
        self._slots, self._cache = [], None
        self.stats.active = 0
