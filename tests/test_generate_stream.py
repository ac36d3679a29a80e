"""Engine semantics with a scripted backend: the call pattern (prefill, one token per step,
slides), UTF-8 streaming, stop strings, end-of-text, cancellation from another thread."""

from __future__ import annotations

import threading
from typing import Any, Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptbench.backends.base import GenerationBackend
from gptbench.backends.spec import GPTConfig
from gptbench.backends.generate import StreamDecoder, generate, generate_batch, generate_tokens, stream_generate
from gptbench.backends.row_text import StopMatcher as _StopMatcher
from gptbench.backends.sampling import SamplingParams
from gptbench.tokenizers.base import Tokenizer

EOT = 256


class BytesEot(Tokenizer):
    """UTF-8 bytes plus an end-of-text id 256."""

    kind = "test"

    @property
    def vocab_size(self) -> int:
        return 257

    @property
    def eot_id(self) -> int:
        return EOT

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return bytes(i for i in ids if i != EOT)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "test"}


class ScriptedBackend(GenerationBackend):
    """Emits scripted tokens (one script per row) and records every forward call. Only the
    generation contract: the engine needs nothing of training."""

    def __init__(self, scripts: Sequence[Sequence[int]], block_size: int = 64, on_sample=None) -> None:
        self.config = GPTConfig(vocab_size=257, block_size=block_size, n_layer=1, n_head=1, n_embd=8)
        self.device = "cpu"
        self.scripts = [list(s) for s in scripts]
        self.calls: list[tuple[int, bool, list[int] | None]] = []  # (input length, fresh cache, pad)
        self.step = 0
        self.on_sample = on_sample

    def new_cache(self, pad=None) -> Any:
        return {"len": 0, "pad": None if pad is None else list(pad)}

    def forward_last(self, ids, cache):
        ids = np.asarray(ids)
        fresh = cache is None or cache["len"] == 0
        pad = cache["pad"] if cache is not None and fresh else None
        if cache is not None:
            cache["len"] += ids.shape[1]
            assert cache["len"] <= self.config.block_size
        assert ids.shape[1] <= self.config.block_size
        self.calls.append((ids.shape[1], fresh, pad))
        return None

    def sample(self, logits, params, history, generator):
        if self.on_sample is not None:
            self.on_sample(self.step)
        out = np.array([s[self.step % len(s)] for s in self.scripts])
        self.step += 1
        return out

    def make_generator(self, seed):
        return None


def stream(script: Sequence[int], prompt="hi", **params):
    be = ScriptedBackend([script])
    p = SamplingParams(temperature=0, **{"max_new_tokens": len(script), **params})
    return list(stream_generate(be, BytesEot(), prompt, p))


def text_of(responses) -> str:
    return "".join(r.text for r in responses)


# ---- call pattern ----------------------------------------------------------------------
def test_prefill_once_then_one_token_per_step():
    be = ScriptedBackend([[65]], block_size=64)
    list(generate_tokens(be, [[1] * 10], SamplingParams(temperature=0, max_new_tokens=6)))
    assert be.calls == [(10, True, None)] + [(1, False, None)] * 5


def test_sliding_window_call_pattern():
    """block 8, stride 2: fill to 8, then re-prefill the last 7 and decode 1 more, repeat."""
    be = ScriptedBackend([[65]], block_size=8)
    list(generate_tokens(be, [[1] * 5], SamplingParams(temperature=0, max_new_tokens=10), stride=2))
    lengths = [(n, fresh) for n, fresh, _ in be.calls]
    assert lengths == [(5, True), (1, False), (1, False), (1, False)] + [(7, True), (1, False)] * 3
    assert len(be.calls) == 10  # one forward per token after the first sample; the last token needs none


def test_without_cache_the_same_windows_are_read_in_full():
    be = ScriptedBackend([[65]], block_size=8)
    list(generate_tokens(be, [[1] * 5], SamplingParams(temperature=0, max_new_tokens=10), stride=2, use_cache=False))
    assert [n for n, _, _ in be.calls] == [5, 6, 7, 8, 7, 8, 7, 8, 7, 8]


def test_batched_rows_are_left_padded_and_slide_on_their_own():
    be = ScriptedBackend([[65], [66]], block_size=8)
    list(generate_tokens(be, [[1, 2], [1, 2, 3, 4, 5, 6]], SamplingParams(temperature=0, max_new_tokens=5), stride=2))
    # Prefill: row 0 padded by 4. Row 1 fills its 8-token window after 2 tokens, so the
    # third token slides it alone to its last 7 tokens; row 0 (5 tokens) keeps its whole
    # context, the 2 positions before it masked as padding.
    assert be.calls == [(6, True, [4, 0]), (1, False, None), (1, False, None), (7, True, [2, 0]), (1, False, None)]


def test_cache_never_exceeds_block_size_for_long_prompts():
    be = ScriptedBackend([[65]], block_size=8)
    list(generate_tokens(be, [list(range(30))], SamplingParams(temperature=0, max_new_tokens=12), stride=3))
    assert be.calls[0] == (8, True, None)  # cropped from the left


# ---- text ----------------------------------------------------------------------------------
def test_stream_decoder_never_splits_characters():
    text = "héllo, 世界! 🎉"
    dec = StreamDecoder()
    deltas = [dec.push(bytes([b])) for b in text.encode()]
    assert "".join(deltas) + dec.flush() == text
    assert all("\ufffd" not in d for d in deltas)
    assert deltas[1] == ""
    assert deltas[2] == "é"


def test_streamed_deltas_are_whole_characters():
    text = "añb 世界 🎉!"
    responses = stream(list(text.encode()))
    assert text_of(responses) == text
    assert all("\ufffd" not in r.text for r in responses)
    assert sum(1 for r in responses if r.text == "") == len(text.encode()) - len(text)
    assert responses[-1].finish_reason == "length"
    assert responses[-1].generation_tokens == len(text.encode())


def test_unfinished_character_at_the_end_becomes_replacement():
    responses = stream(list("ab".encode()) + [0xE4, 0xB8])  # first two bytes of 世
    assert text_of(responses) == "ab\ufffd"


def test_stop_string_across_tokens_is_not_emitted():
    responses = stream(list(b"abc STOP def"), stop=("STOP",))
    assert text_of(responses) == "abc "
    assert responses[-1].finish_reason == "stop"
    assert len(responses) == len("abc STOP")  # stops at the token that completes it
    assert all("S" not in r.text for r in responses)


def test_held_back_prefix_is_released_when_it_is_not_a_stop():
    responses = stream(list(b"a STAR b"), stop=("STOP",))
    assert text_of(responses) == "a STAR b"
    assert responses[-1].finish_reason == "length"
    assert [r.text for r in responses[2:5]] == ["", "", "STA"]


def test_earliest_of_several_stops_wins():
    assert text_of(stream(list(b"xx\n\nyy END"), stop=("END", "\n\n"))) == "xx"


def test_eos_flushes_held_text_and_ends():
    responses = stream(list(b"xyST") + [EOT] + list(b"zzz"), stop=("STOP",), max_new_tokens=20)
    assert text_of(responses) == "xyST"
    assert responses[-1].finish_reason == "eos"
    assert responses[-1].token == EOT
    assert len(responses) == 5


def test_stop_token_ids_end_with_eos():
    responses = stream(list(b"abcdef"), stop_token_ids=(ord("d"),))
    assert text_of(responses) == "abc"
    assert responses[-1].finish_reason == "eos"


def test_empty_prompt_starts_from_eot():
    be = ScriptedBackend([[65]])
    generate(be, BytesEot(), "", SamplingParams(temperature=0, max_new_tokens=2))
    assert be.calls[0] == (1, True, None)


def test_zero_new_tokens():
    responses = stream([65], max_new_tokens=0)
    assert len(responses) == 1
    assert responses[0].finish_reason == "length"
    assert responses[0].token is None


# ---- cancellation ----------------------------------------------------------------------------
def test_cancel_from_another_thread_stops_within_one_token():
    """Cancel is set while token 6 is being computed: the stream ends with that token."""
    reached, proceed, cancel = threading.Event(), threading.Event(), threading.Event()

    def on_sample(step: int) -> None:
        if step == 5:
            reached.set()
            assert proceed.wait(10)

    be = ScriptedBackend([list(b"abcdefghijklmnop")], on_sample=on_sample)
    out: list = []
    worker = threading.Thread(
        target=lambda: out.extend(stream_generate(be, BytesEot(), "hi", SamplingParams(temperature=0, max_new_tokens=100), cancel=cancel))
    )
    worker.start()
    assert reached.wait(10)
    cancel.set()
    proceed.set()
    worker.join(10)
    assert not worker.is_alive()
    assert out[-1].finish_reason == "cancelled"
    assert len(out) == 6
    assert text_of(out) == "abcdef"
    assert be.step == 6  # nothing computed after the cancelled token


def test_cancel_before_start_generates_nothing():
    cancel = threading.Event()
    cancel.set()
    be = ScriptedBackend([[65]])
    out = list(stream_generate(be, BytesEot(), "hi", SamplingParams(max_new_tokens=5), cancel=cancel))
    assert [r.finish_reason for r in out] == ["cancelled"]
    assert be.calls == []


# ---- batches -----------------------------------------------------------------------------------
def test_generate_batch_ends_rows_on_their_own_and_stops_when_all_did():
    scripts = [list(b"one END two"), list(b"ab") + [EOT] + list(b"cdefghijkl"), list(b"plain text here")]
    be = ScriptedBackend(scripts)
    res = generate_batch(be, BytesEot(), ["a", "bb", "ccc"], SamplingParams(temperature=0, max_new_tokens=8, stop=("END",)))
    assert [r.text for r in res] == ["one ", "ab", "plain te"]
    assert [r.finish_reason for r in res] == ["stop", "eos", "length"]
    assert [len(r.tokens) for r in res] == [7, 3, 8]
    assert be.step == 8


def test_generate_batch_stops_early_when_every_row_ended():
    be = ScriptedBackend([[EOT], list(b"x") + [EOT]])
    res = generate_batch(be, BytesEot(), ["a", "b"], SamplingParams(temperature=0, max_new_tokens=50))
    assert [r.finish_reason for r in res] == ["eos", "eos"]
    assert be.step == 2


@pytest.mark.parametrize("bad", [[], [[]]])
def test_empty_batch_or_prompt_is_a_user_error(bad):
    from gptbench.errors import UserError

    with pytest.raises(UserError, match="empty prompt"):
        list(generate_tokens(ScriptedBackend([[1]]), bad, SamplingParams()))


# ---- the stop matcher against a plain reference ----------------------------------------------
@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="abc\n", max_size=40),
    stops=st.lists(st.text(alphabet="abc\n", min_size=1, max_size=4), max_size=3),
    cuts=st.lists(st.integers(0, 40), max_size=12),
)
def test_stop_matcher_equals_cutting_at_the_first_stop(text, stops, cuts):
    """However the text is streamed, the result is the whole text cut where the
    earliest-*starting* stop begins (what OpenAI and Hugging Face return)."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    want = text[: min(found)] if found else text
    got, hit = _stream_through_matcher(text, stops, cuts)
    assert got == want
    assert hit == bool(found)


def _stream_through_matcher(text, stops, cuts):
    m = _StopMatcher(stops)
    bounds = sorted({0, len(text), *[c for c in cuts if c <= len(text)]})
    out, hit = [], False
    for a, b in zip(bounds, bounds[1:]):
        piece, hit = m.feed(text[a:b])
        out.append(piece)
        if hit:
            break
    if not hit:
        piece, hit = m.feed("", final=True)
        out.append(piece)
    return "".join(out), hit


def test_a_longer_stop_that_starts_earlier_wins_over_one_that_completes_first():
    """The counterexample hypothesis once found: 'a' completes at index 1 while '\naa',
    which starts at 0, is still incomplete; the text must be held until it is decided."""
    assert _stream_through_matcher("\naa", ["a", "\naa"], [2]) == ("", True)
    assert _stream_through_matcher("\nab", ["a", "\naa"], [2]) == ("\n", True)  # '\naa' failed: 'a' at 1 wins
    assert _stream_through_matcher("\na", ["a", "\naa"], [2]) == ("\n", True)  # the end decides
