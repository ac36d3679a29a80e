"""What a `--task` names, resolved to a `Task`: `mc:FILE.jsonl` (local multiple choice),
`bpb:FILE` (bits per byte of any UTF-8 text), `gen:FILE.jsonl` (a chat run's answers, exact
match: `generative`), or a standard task by name (`hub.HUB_TASKS`)."""

from __future__ import annotations

from pathlib import Path

from gptbench.errors import UserError
from gptbench.evaluation.generative import load_gen_items
from gptbench.evaluation.hub import HUB_TASKS, load_hub_items
from gptbench.evaluation.items import Task, load_jsonl_items

TASK_HELP = "mc:FILE.jsonl, bpb:FILE.txt, gen:FILE.jsonl, or " + ", ".join(HUB_TASKS)
FILE_KINDS = ("mc", "bpb", "gen")


def check_task_name(spec: str) -> str:
    """`spec` if it names a task (files are not read yet), else a UserError listing the kinds."""
    kind, sep, rest = spec.partition(":")
    if sep and kind in FILE_KINDS:
        if not rest:
            raise UserError(f"--task {spec}: name the file after '{kind}:'")
        return spec
    if spec in HUB_TASKS:
        return spec
    raise UserError(f"unknown task {spec!r}; choose {TASK_HELP}")


def split_tasks(spec: str) -> list[str]:
    """`--eval-task`'s value: one task or several, comma-separated, each checked by name."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    for name in names:
        check_task_name(name)
    return names


def resolve_task(spec: str) -> Task:
    """The task `spec` names, its items read and checked."""
    check_task_name(spec)
    kind, _, rest = spec.partition(":")
    if kind == "mc":
        return Task(spec, "mc", load_jsonl_items(Path(rest).expanduser()))
    if kind == "bpb":
        path = Path(rest).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"text file not found: {path} (--task bpb:FILE)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read --task {spec}: {exc}") from None
        return Task(spec, "bpb", text=text)
    if kind == "gen":
        return Task(spec, "gen", gen_items=load_gen_items(Path(rest).expanduser()))
    return Task(spec, "mc", load_hub_items(spec))
