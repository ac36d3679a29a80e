"""Long histories (issue 25): vectorised chart data against plain references, reading a long
metrics file tail-first and by appended bytes only, and the runs listing at scale."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from tui_fixtures import write_run

from gptbench.runstore import JsonlTail, Run, iter_jsonl, iter_jsonl_chunks
from gptbench.tui import runsdata
from gptbench.tui.chartdata import ema, minmax_downsample
from gptbench.tui.metricseries import MetricSeries
from gptbench.tui.runsdata import RunScanner, RunWatcher


def plain_ema(values, weight):
    """The definition, one value at a time (float64): non-finite values pass through."""
    out, acc, norm = [], 0.0, 0.0
    for v in values:
        if not math.isfinite(v):
            out.append(v)
            continue
        acc = acc * weight + (1 - weight) * v
        norm = norm * weight + (1 - weight)
        out.append(acc / norm)
    return out


@pytest.mark.parametrize("weight", [0.0, 0.5, 0.6, 0.9, 0.99])
def test_ema_matches_the_plain_recurrence(weight):
    rng = np.random.default_rng(0)
    vals = rng.normal(3.0, 1.0, 5003)
    vals[[0, 7, 4000]] = [np.nan, np.inf, np.nan]  # a NaN first, and later ones, move nothing
    got, want = ema(vals, weight), np.array(plain_ema(vals.tolist(), weight))
    assert np.array_equal(np.isfinite(got), np.isfinite(want))
    np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], rtol=1e-12, atol=0)
    assert ema([1.0, 2.0, 3.0], 0.5) == pytest.approx([1.0, (0.5 * 1 + 2) / 1.5, (0.25 * 1 + 0.5 * 2 + 3) / 1.75])


def plain_minmax(xs, ys, columns):
    """Per column of equal x width: the set of (x, y) of its first lowest and first highest point."""
    lo, hi = min(xs), max(xs)
    cols: dict[int, list[tuple[float, float]]] = {}
    for x, y in zip(xs, ys):
        cols.setdefault(min(int((x - lo) * columns / (hi - lo)), columns - 1), []).append((x, y))
    out = set()
    for pts in cols.values():
        out.add(min(pts, key=lambda p: p[1]))
        out.add(max(pts, key=lambda p: p[1]))
    return out


def test_minmax_downsample_keeps_spikes_and_agrees_with_a_plain_reference():
    rng = np.random.default_rng(1)
    xs = np.arange(100_000, dtype=np.float64)
    ys = 3.0 + 0.01 * rng.standard_normal(xs.size)
    ys[54_321], ys[77_777], ys[12] = 40.0, -5.0, np.nan  # one-step spikes; NaN is dropped
    px, py = minmax_downsample(xs, ys, 200)
    assert len(px) <= 400 and np.all(np.diff(px) > 0)  # in x order
    assert py.max() == 40.0 and px[np.argmax(py)] == 54_321
    assert py.min() == -5.0 and px[np.argmin(py)] == 77_777
    finite = np.isfinite(ys)
    assert set(zip(px.tolist(), py.tolist())) == plain_minmax(xs[finite].tolist(), ys[finite].tolist(), 200)
    short_x, short_y = minmax_downsample([1, 2, 3], [1.0, np.nan, 3.0], 200)  # short series: whole, finite
    assert short_x.tolist() == [1, 3] and short_y.tolist() == [1.0, 3.0]
    # a bucket-mean downsampler would have flattened the spike to ~3.2
    assert np.add.reduceat(ys[finite], np.arange(0, finite.sum(), 500)).max() / 500 < 4


def test_minmax_downsample_of_unsorted_points_agrees_with_the_plain_reference():
    """Points out of x order (a merged or resumed history) take the sorting path, with the
    same result as sorted ones take the run-per-column path."""
    rng = np.random.default_rng(2)
    xs = rng.permutation(20_000).astype(np.float64)
    ys = rng.standard_normal(xs.size)
    px, py = minmax_downsample(xs, ys, 150)
    assert set(zip(px.tolist(), py.tolist())) == plain_minmax(xs.tolist(), ys.tolist(), 150)
    order = np.argsort(xs)
    sx, sy = minmax_downsample(xs[order], ys[order], 150)
    assert set(zip(sx.tolist(), sy.tolist())) == set(zip(px.tolist(), py.tolist()))


@pytest.mark.parametrize("kind", ["duplicates", "on_edges", "int_steps", "one_x"])
def test_minmax_downsample_of_sorted_points_puts_edge_points_in_the_plain_reference_s_columns(kind):
    """The sorted path finds column runs by binary search: points on or next to an edge,
    repeated xs and integer steps land in the column the formula gives."""
    rng = np.random.default_rng(3)
    xs = {"duplicates": np.sort(rng.integers(0, 1000, 20_000)).astype(np.float64),
          "on_edges": np.repeat(np.linspace(0.0, 1.0, 301), 7),  # 300 columns: many points exactly on an edge
          "int_steps": np.arange(3, 50_003, dtype=np.int64),
          "one_x": np.full(5000, 7.0)}[kind]
    ys = rng.standard_normal(xs.size)
    columns = 300 if kind == "on_edges" else 97
    px, py = minmax_downsample(xs, ys, columns)
    assert px.dtype == np.float64 and np.all(np.diff(px) >= 0)
    if kind == "one_x":
        assert sorted(py.tolist()) == [ys.min(), ys.max()]
        return
    assert set(zip(px.tolist(), py.tolist())) == plain_minmax(xs.tolist(), ys.tolist(), columns)


def record(step: int, loss: float = 1.0) -> str:
    return json.dumps({"step": step, "loss": loss, "lr": 1e-3, "grad_norm": 0.5, "tokens_per_sec": 10.0,
                       "elapsed": step, "time": 1000.0 + step, "type": "train"}) + "\n"


def test_tail_reads_only_appended_bytes_and_waits_for_a_torn_line(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    path.write_text(record(1) + record(2))
    tail = JsonlTail(path)
    assert [r["step"] for r in tail.poll()] == [1, 2]
    reads: list[int] = []
    real_open = open

    def counting_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if str(file) == str(path) and "b" in mode:
            real_read = f.read
            f.read = lambda n=-1: (lambda b: (reads.append(len(b)), b)[1])(real_read(n))  # type: ignore[method-assign]
        return f

    monkeypatch.setattr("builtins.open", counting_open)
    torn = record(4)[:20]
    with real_open(path, "a") as f:
        f.write(record(3) + torn)
    assert [r["step"] for r in tail.poll()] == [3]  # the torn line is not a record yet
    assert reads == [len(record(3)) + len(torn)]  # only what was appended
    with real_open(path, "a") as f:
        f.write(record(4)[20:])
    assert [r["step"] for r in tail.poll()] == [4]  # completed: read from the torn line's start
    assert reads[-1] == len(record(4))
    assert tail.poll() == [] and len(reads) == 2  # nothing appended: nothing read


def test_chunked_reads_and_the_bulk_parse_skip_bad_lines_like_the_line_reader(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [record(i) for i in range(50)]
    lines[10] = "not json\n"
    lines[20] = '{"a": 1}, {"b": 2}\n'  # two values on one line is no record
    lines[30] = "[1, 2]\n"
    path.write_text("".join(lines))
    want = list(iter_jsonl(path))
    got = [r for chunk in iter_jsonl_chunks(path, 0, path.stat().st_size, chunk_bytes=300) for r in chunk]
    assert got == want and len(got) == 47
    tail = JsonlTail(path)
    assert tail.poll() == want


def test_a_long_metrics_file_is_shown_from_its_end_first_then_whole(tmp_path, monkeypatch):
    run = write_run(tmp_path, "long", step=10, max_iters=3000)
    steps = list(range(20, 3000))
    with open(run / "metrics.jsonl", "a") as f:
        f.write("".join(record(s, loss=50.0 if s == 33 else 1.0) for s in steps))
    whole = MetricSeries()
    whole.extend(iter_jsonl(run / "metrics.jsonl"))
    monkeypatch.setattr(runsdata, "TAIL_FIRST_BYTES", 20_000)
    watcher = RunWatcher(Run(run))
    first = watcher.poll()
    assert 0 < len(first.series.train_step) < len(whole.train_step)
    assert first.series.train_step[-1] == 2999
    with open(run / "metrics.jsonl", "a") as f:
        f.write(record(3000))
    second = watcher.poll()  # the head, put before the tail (and what was appended meanwhile)
    assert second.series.train_step.tolist() == whole.train_step.tolist() + [3000]
    assert second.series.train_loss.max() == 50.0
    assert second.series.eval_step.tolist() == whole.eval_step.tolist()
    assert first.series.train_step[-1] == 2999  # snapshots never change


def test_many_runs_list_the_same_through_the_scanner_and_the_store(tmp_path):
    from gptbench.runstore import RunStore

    root = tmp_path / "runs"
    for i in range(60):
        write_run(root, f"run-{i:03d}", step=2 + i % 3, max_iters=5, eval_interval=2, params=1000 + i)
    store = [s.to_dict() for s in RunStore(root).summaries()]
    scanner = RunScanner(root)
    rows, _ = scanner.scan()
    again, changed = scanner.scan()  # from the stat cache
    assert [s.to_dict() for s in rows] == store == [s.to_dict() for s in again] and not changed
    assert [s["name"] for s in store] == sorted(f"run-{i:03d}" for i in range(60))


def test_metric_columns_grow_the_same_in_one_batch_as_record_by_record():
    recs = [json.loads(record(s, loss=1.0 / s)) for s in range(1, 40)]
    recs[5]["tokens_per_sec"] = None
    recs += [{"type": "eval", "step": 20, "train_loss": 2.0, "val_loss": 2.5}, {"type": "sample", "step": 30, "text": "hi"}]
    recs += [json.loads(record(s, loss=9.0)) for s in (25, 26)]  # a resume re-logging from step 25
    recs += [{"type": "train", "step": "x", "loss": 1.0}, {"type": "eval", "step": 30, "train_loss": 1.0, "val_loss": 1.5}]
    batch, single = MetricSeries(), MetricSeries()
    batch.extend(recs[:39])  # the fast path: whole columns
    batch.extend(recs[39:])
    for r in recs:
        single.extend([r])
    for name in ("train_step", "train_loss", "lr", "tokens_per_sec", "train_time", "eval_step", "val_loss", "val_bpb"):
        np.testing.assert_array_equal(getattr(batch, name), getattr(single, name), err_msg=name)
    assert batch.train_step.tolist() == list(range(1, 25)) + [25, 26]
    assert math.isnan(batch.tokens_per_sec[5]) and batch.sample_text == "hi"


def test_a_growing_series_is_smoothed_only_where_it_grew_and_the_same_as_from_scratch(monkeypatch):
    from gptbench.tui.chartdata import ema_from
    from gptbench.tui.widgets import charts

    rng = np.random.default_rng(2)
    vals = rng.random(3000)
    head, state = ema_from(vals[:1234], 0.9)
    tail, _ = ema_from(vals[1234:], 0.9, state)
    np.testing.assert_allclose(np.concatenate([head, tail]), ema(vals, 0.9), rtol=1e-12)

    def grow(upto: int) -> MetricSeries:
        start = len(series.train_step)
        series.extend([json.loads(record(s, loss=float(vals[s - 1]))) for s in range(start + 1, upto + 1)])
        return series.copy()

    smoothed: list[int] = []
    monkeypatch.setattr(charts, "ema_from", lambda v, w, state=(0.0, 0.0): (smoothed.append(len(v)), ema_from(v, w, state))[1])
    series = MetricSeries()
    chart = charts.MetricChart("loss", smoothable=True, smoothing_index=3)  # 0.9
    grow(1000)
    for upto in (1200, 1500, 3000):  # 1200 -> 1500 fits the column's spare room; 3000 moves it
        snap = grow(upto)
        _, ys = chart._points(charts.Series("train", snap.train_step, snap.train_loss), 4000)
        np.testing.assert_allclose(ys, ema(vals[:upto], 0.9), rtol=1e-12)
    assert smoothed == [1200, 300, 3000]  # only the 300 new values were smoothed the second time
    series.extend([json.loads(record(10, loss=5.0))])  # a rewind: new arrays, smoothed afresh
    rewound = series.copy()
    _, ys = chart._points(charts.Series("train", rewound.train_step, rewound.train_loss), 4000)
    np.testing.assert_allclose(ys, ema(np.r_[vals[:9], 5.0], 0.9), rtol=1e-12)
