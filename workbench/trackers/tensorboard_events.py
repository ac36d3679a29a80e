"""TensorBoard: event files in `RUN/tensorboard/`, written with TensorBoard's own event writer.

Scalars are written as float64 tensors under the scalars plugin (TensorBoard shows them
like any scalar), so the values read back are exactly those of metrics.jsonl; the run's
config is one text summary, `config`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

FOLDER = "tensorboard"


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self, run_dir: Path, run_name: str, config: dict[str, Any], logdir: Path | None = None) -> None:
        try:
            from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, types_pb2
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
        except ImportError:
            from gptbench.trackers.base import missing

            raise missing("tensorboard", "tensorboard") from None
        self._pb = (event_pb2, summary_pb2, tensor_pb2, types_pb2)
        self.logdir = Path(logdir) if logdir is not None else Path(run_dir) / FOLDER
        self.writer = EventFileWriter(str(self.logdir), flush_secs=10, filename_suffix=f".{run_name}")
        text = json.dumps(config, indent=2, sort_keys=True, default=str)
        self._write(0, "config", "text", types_pb2.DT_STRING, string_val=[text.encode("utf-8")])

    def _write(self, step: int, tag: str, plugin: str, dtype: int, **values: Any) -> None:
        event_pb2, summary_pb2, tensor_pb2, _ = self._pb
        meta = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin))
        tensor = tensor_pb2.TensorProto(dtype=dtype, **values)
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, metadata=meta, tensor=tensor)])
        self.writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        double = self._pb[3].DT_DOUBLE
        for tag, value in metrics.items():
            self._write(step, tag, "scalars", double, double_val=[value])

    def close(self) -> None:
        self.writer.close()
