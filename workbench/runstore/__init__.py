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

One owner: `RunWriter` is the only code that writes a run; readers read through
`Run`/`read_summary`. Derived states (crashed, stale, corrupt) come from one function,
`format.derive_state`.
"""

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
from gptbench.runstore.reader import (
    CheckpointInfo,
    JsonlTail,
    Run,
    RunSummary,
    TrainingState,
    iter_jsonl,
    load_training_state,
    read_json,
    read_summary,
)
from gptbench.runstore.store import RunStore
from gptbench.runstore.writer import RunLock, RunWriter, is_locked

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
    "load_training_state",
    "read_json",
    "read_summary",
    "validate_run_name",
]
