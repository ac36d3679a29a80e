"""The run specification: one typed, frozen, versioned description of a run, and its mappings.

`RunSpec` and its sections (`run.py`, `train.py`), the presets as values of it
(`presets.py`), the settings table that flags, TOML keys and TUI fields derive from
(`settings.py`), building and overriding specs (`resolve.py`), and the command line
(`cli.py`) and TOML (`toml.py`) mappings.
"""

from gptbench.spec.presets import DEFAULT_PRESET, FINETUNE_PRESET, PRESETS
from gptbench.spec.resolve import changes, resolve_spec, spec_overrides, with_overrides
from gptbench.spec.run import SPEC_VERSION, ParallelSpec, RunSpec, RuntimeSpec, default_run_name
from gptbench.spec.train import TrainConfig

__all__ = [
    "DEFAULT_PRESET", "FINETUNE_PRESET", "PRESETS", "SPEC_VERSION", "ParallelSpec", "RunSpec", "RuntimeSpec", "TrainConfig",
    "changes", "default_run_name", "resolve_spec", "spec_overrides", "with_overrides",
]
