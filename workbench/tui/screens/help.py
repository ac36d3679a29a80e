"""The help screen: every key of the screen it was opened from, generated from the live
bindings (so it cannot drift from what the keys really do), plus how the app works."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from rich.table import Table
from rich.text import Text
from textual.widgets import Markdown, Static

ABOUT = """\
**Runs** lists every run in the runs directory and follows it live (runs started from another
terminal with `gptbench train --no-ui` appear within a second). **Train** starts
`gptbench train --no-ui` as its own process, so closing this app never stops a run; the
dashboard only reads the run's files. **Chat** loads a checkpoint and streams replies.

Everywhere: `Ctrl+P` opens the command palette (every action, searchable), `F1` this help,
`F2` runs, `F3` the train form, `F4` chat (from a dashboard too), `Ctrl+Q` quits. The footer
shows the most used keys of a screen; the table below has all of them. Themes: palette →
*Theme*.
"""


def _key_label(key: str) -> str:
    names = {"question_mark": "?", "slash": "/", "space": "Space", "escape": "Esc", "enter": "Enter",
             "delete": "Del", "plus": "+", "minus": "-", "full_stop": "."}
    out = []
    for k in key.split(","):
        k = k.strip()
        parts = [names.get(p, p.upper() if len(p) <= 3 and p.startswith("f") and p[1:].isdigit() else p) for p in k.split("+")]
        out.append("+".join(p.capitalize() if p in ("ctrl", "shift", "alt") else p for p in parts))
    return " / ".join(out)


def bindings_table(screen: Screen, app: object) -> Table:
    """Keys of the screen (and its focused widget) then the global ones, one row per action."""
    rows: dict[tuple[bool, str], list[str]] = {}  # (global?, description) -> keys
    for key, active in screen.active_bindings.items():
        b: Binding = active.binding
        if not b.description or b.system:
            continue
        if active.node is not screen and active.node is not app and not b.show:
            continue  # a widget's own navigation keys
        rows.setdefault((active.node is app, b.description), []).append(key)
    table = Table(box=None, show_header=True, header_style="bold", padding=(0, 2), expand=False)
    table.add_column("Key", style="bold cyan", no_wrap=True)
    table.add_column("Action")
    for (is_global, desc), keys in sorted(rows.items(), key=lambda kv: kv[0][0]):  # screen keys first, then global
        table.add_row(_key_label(",".join(keys)), desc + (" (everywhere)" if is_global else ""))
    return table


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q,question_mark", "dismiss", "Close help")]

    def __init__(self, screen: Screen, title: str, runs_dir: str) -> None:
        super().__init__()
        # what this screen is for and its keys first (what F1 is pressed for), then the app
        screen_help = f"## {title}\n\n{screen.HELP}" if screen.HELP else f"## {title}"
        self.intro = f"# gptbench\n\nRuns directory: `{runs_dir}`\n\n{screen_help}"
        self.about = f"## How the app works\n\n{ABOUT}"
        self.keys = bindings_table(screen, screen.app)
        self.keys_title = f"Keys on this screen ({title})"

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog help-dialog"):
            yield Markdown(self.intro)
            yield Static(Text(self.keys_title, style="bold"), classes="help-keys-title")
            yield Static(self.keys, classes="help-keys")
            yield Markdown(self.about)
