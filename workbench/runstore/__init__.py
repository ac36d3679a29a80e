"""The run directory: the contract between a trainer and everything that watches it.

    runs/<name>/                     (format version 2; see format.py)
      config.json          resolved model/train/data/tokenizer config, corpus sha256,
                           tokenizer fingerprint, versions (written once, before training)
      status.json          state (starting|running|finished|stopped|failed), pid, host,
                           heartbeat, step, best val loss, tokens/s, error
      metrics.jsonl        one JSON object per line, append-only (type train|eval|sample)
      log.txt              human-readable log lines, append-only
      tokenizer.json       the run's tokenizer (+ tokenizer.tiktoken for BPE)
      checkpoints/
        step-N.state.safetensors  optimizer moments + RNG states; trainer state in the
                                  header (written first)
        step-N.safetensors        weights, config, step and val loss in the header
                                  (written last: it marks the checkpoint complete)
      .lock                flock held by the one process writing the run
      *.torn               fragments of torn last lines, cut before the next append

One owner: `RunWriter` is the only code that writes a run; readers read through
`Run`/`read_summary`. Modules by job: format (names, schemas, records), reader (the
run), checkpoints (finding and retaining them), training_state (validating one),
appendonly (reading and repairing append-only files), lock, writer, store. Derived
states (crashed, stale, corrupt) come from one function, `format.derive_state`.
"""

from gptbench.runstore.appendonly import JsonlTail, iter_jsonl, iter_jsonl_chunks
from gptbench.runstore.checkpoints import CheckpointInfo
from gptbench.runstore.format import (
    HEARTBEAT_INTERVAL_S,
    RUN_FORMAT_VERSION,
    CorruptRunError,
    EvalRecord,
    RunState,
    SampleRecord,
    TrainRecord,
    validate_run_name,
)
from gptbench.runstore.lock import RunLock, is_locked
from gptbench.runstore.reader import Run, RunSummary, read_json, read_summary
from gptbench.runstore.store import RunStore
from gptbench.runstore.training_state import TrainingState, load_training_state
from gptbench.runstore.writer import RunWriter

__all__ = [
    "HEARTBEAT_INTERVAL_S",
    "RUN_FORMAT_VERSION",
    "CheckpointInfo",
    "CorruptRunError",
    "EvalRecord",
    "JsonlTail",
    "Run",
    "RunLock",
    "RunState",
    "RunStore",
    "RunSummary",
    "RunWriter",
    "SampleRecord",
    "TrainRecord",
    "TrainingState",
    "is_locked",
    "iter_jsonl",
    "iter_jsonl_chunks",
    "load_training_state",
    "read_json",
    "read_summary",
    "validate_run_name",
]
