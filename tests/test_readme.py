"""The README's reference says what the code does: the `--config` keys and the flag tables
of `sample`, `chat` and `convert` are checked against what the commands accept, so neither
can drift from the other. (The `train` flag table has its own check.)"""

from __future__ import annotations

import re
import tomllib

import pytest

from gptbench.cli import build_parser, main
from helpers import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
FLAG = re.compile(r"--[a-z][a-z0-9-]*")


def section(title: str) -> str:
    """The README text under the heading `title` up to the next heading of any level."""
    start = README.index(title)
    end = README.find("\n#", start + len(title))
    return README[start:end if end >= 0 else None]


def table_rows(text: str) -> list[list[str]]:
    """The cells of every Markdown table row in `text` (header and rule rows left out)."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if cells and cells[0] not in ("flag", "key"):
                rows.append(cells)
    return rows


def documented_flags(text: str) -> set[str]:
    return {flag for row in table_rows(text) for flag in FLAG.findall(row[0])}


def accepted_flags(command: str) -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict) and command in a.choices)
    options = set(sub.choices[command]._option_string_actions)
    return {o for o in options if o.startswith("--")} - {"--help", "--runs-dir"}


@pytest.mark.parametrize("command, title", [("sample", "### `gptbench sample`"), ("convert", "### `gptbench convert SRC DST`")])
def test_flag_tables_list_exactly_the_flags_a_command_accepts(command, title):
    assert documented_flags(section(title)) == accepted_flags(command)


def test_chat_takes_samples_model_and_sampling_flags():
    text = section("### `gptbench sample`")
    sampling = documented_flags(text[text.index("Sampling flags, shared with `chat`"):])
    model = {"--run", "--checkpoint", "--weights", "--tokenizer", "--backend", "--device", "--strict"}
    assert model <= documented_flags(text)
    own = {"--system", "--message", "--json"}  # a chat run's conversation, answered once
    assert all(f"`{flag}`" in section("### `gptbench chat --run NAME`") for flag in model | own)
    assert accepted_flags("chat") == model | sampling | own


def _valid_keys(tmp_path, capsys, toml_text: str, section_name: str) -> set[str]:
    """The keys `gptbench train --config` accepts in a section, from its one-line refusal."""
    path = tmp_path / "bad.toml"
    path.write_text(toml_text)
    assert main(["train", "--no-ui", "--runs-dir", str(tmp_path / "runs"), "--config", str(path)]) == 2
    err = capsys.readouterr().err
    m = re.search(rf"unknown {re.escape(section_name)} key\(s\): not_a_key; valid keys are (.*)$", err.strip())
    assert m, err
    return set(m.group(1).split(", "))


def _documented_keys(key: str) -> set[str]:
    """The keys a `--config` table row names: `[model]`'s fields, or the top-level keys."""
    rows = table_rows(section("#### `--config FILE.toml`"))
    if key == "top":
        return {k for row in rows if not row[0].startswith("`[") for k in re.findall(r"`([a-z_]+)`", row[0])}
    row = next(r for r in rows if r[0] == f"`{key}`")
    return set(re.findall(r"`([a-z_0-9]+)`", row[1])) - {"false", "true"} - _documented_keys("top")  # "needs `init_from`"


@pytest.mark.parametrize("key, toml_text, section_name", [
    ("top", "not_a_key = 1\n", "config-file"),
    ("[model]", "[model]\nnot_a_key = 1\n", "[model]"),
    ("[train]", "[train]\nnot_a_key = 1\n", "[train]"),
    ("[lora]", "[lora]\nnot_a_key = 1\n", "[lora]"),
    ("[parallel]", "[parallel]\nnot_a_key = 1\n", "[parallel]"),
])
def test_config_keys_are_documented_exactly(tmp_path, capsys, key, toml_text, section_name):
    valid = _valid_keys(tmp_path, capsys, toml_text, section_name)
    if key == "top":
        valid -= {"model", "train", "lora", "parallel"}  # the sections have rows of their own
    assert _documented_keys(key) == valid


def test_the_config_example_uses_documented_keys():
    example = section("#### `--config FILE.toml`")
    text = example[example.index("```toml") + len("```toml"):]
    data = tomllib.loads(text[: text.index("```")])
    sections = {k for k, v in data.items() if isinstance(v, dict)}
    assert set(data) - sections <= _documented_keys("top")
    for name in sections:
        assert set(data[name]) <= _documented_keys(f"[{name}]"), name
