"""Training a run: opening or resuming it, the loop, its checkpoint state, its metrics.

`opening` claims a new run and `resuming` validates and reopens one; `trainer` is the
Trainer over an opened run; `loop` its steps; `state` the checkpoint components;
`evaluation` and `textmetrics` the eval batches and bits per byte; `distributed` the
rank-0 helpers; `schedule` the learning rate; `signals` graceful stops; `reporting` what
the loop tells its front end.
"""

from gptbench.training.loop import Diverged
from gptbench.training.reporting import QuietReporter, Reporter
from gptbench.training.schedule import lr_at
from gptbench.training.textmetrics import full_split_loss, split_bytes, token_byte_lengths
from gptbench.training.trainer import Trainer, TrainOutcome

__all__ = ["Diverged", "QuietReporter", "Reporter", "TrainOutcome", "Trainer", "full_split_loss", "lr_at", "split_bytes", "token_byte_lengths"]
