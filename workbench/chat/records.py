"""Conversation records in, validated `Message` lists out: the chat data formats of `--sft`.

Three forms, one record each:
  {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}   (multi-turn)
  {"prompt": "...", "completion": "..."}     (one user turn, one assistant turn)
  the same records in a `.json`/`.parquet` file or a Hugging Face dataset
  (`hf:NAME[:CONFIG][:SPLIT][#FIELD]`, a `messages` column or FIELD) read through `datasets`.
A `.jsonl` file is read line by line here, so a bad record is named by its line; through
`datasets` by its record number. Every problem is one UserError naming the place.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from gptbench.errors import UserError
from gptbench.tokenizers.chat import ROLES, Message, refuse_special_text

Conversation = list[Message]


@dataclass
class ChatCorpus:
    """The conversations of a `--data` spec, with what identifies them."""

    spec: str
    name: str
    conversations: list[Conversation]
    sha256: str


def conversation(record: Any, where: str) -> Conversation:
    """One record as a conversation; UserError naming `where` and the problem."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: a record must be a JSON object with `messages` or `prompt`/`completion`, got {type(record).__name__}")
    if "messages" in record:
        raw = record["messages"]
        if not isinstance(raw, list) or not raw:
            raise UserError(f"{where}: `messages` must be a non-empty list of {{\"role\", \"content\"}} objects")
        messages = [_message(m, f"{where} message {i + 1}") for i, m in enumerate(raw)]
    elif "prompt" in record or "completion" in record:
        messages = [_message({"role": role, "content": record.get(key)}, f"{where} `{key}`")
                    for role, key in (("user", "prompt"), ("assistant", "completion"))]
    else:
        fields = ", ".join(map(str, record)) or "none"
        raise UserError(f"{where}: no `messages` and no `prompt`/`completion` field (fields: {fields}); write one of the two chat forms")
    if not any(m.role == "assistant" for m in messages):
        raise UserError(f"{where}: the conversation has no assistant turn, so nothing would be trained; add one or drop the record")
    return messages


def _message(m: Any, where: str) -> Message:
    if not isinstance(m, dict):
        raise UserError(f"{where}: a message must be an object with `role` and `content`, got {type(m).__name__}")
    role, content = m.get("role"), m.get("content")
    if role not in ROLES:
        raise UserError(f"{where}: unknown role {role!r}; use one of {', '.join(ROLES)}")
    if not isinstance(content, str):
        raise UserError(f"{where}: content must be a string, got {'nothing' if content is None else type(content).__name__}")
    if not content.strip():
        raise UserError(f"{where}: empty {role} message; give it some text or drop the record")
    message = Message(role, content)
    refuse_special_text(message, where)  # why refused, not encoded: gptbench.tokenizers.chat
    return message


def read_jsonl(path: Path, shown: str) -> Iterator[Conversation]:
    """Conversations of a JSON-lines file; blank lines are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{shown} is not UTF-8 text; pass a JSON-lines file of conversations") from None
    except OSError as exc:
        raise UserError(f"cannot read {shown}: {exc.strerror}") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise UserError(f"{shown} line {lineno}: malformed JSON ({exc.msg}); fix or remove the line") from None
        yield conversation(record, f"{shown} line {lineno}")


def read_records(records: Iterable[Any], shown: str, field: str = "messages") -> Iterator[Conversation]:
    """Conversations of dataset records (through `datasets`), named by record number; with a
    `field` other than `messages`, that column holds each record's messages."""
    for i, record in enumerate(records, 1):
        where = f"{shown} record {i}"
        if field != "messages" and isinstance(record, dict):
            if field not in record:
                fields = ", ".join(map(str, record)) or "none"
                raise UserError(f"{where} has no field {field!r} (fields: {fields}); pick the messages column with #FIELD")
            record = {"messages": record[field]}
        yield conversation(record, where)


def _local_records(path: Path, shown: str) -> Iterator[Any]:
    from gptbench.data.hub import import_datasets, iter_dataset

    def open_dataset() -> Any:
        datasets = import_datasets(shown)
        datasets.disable_progress_bars()
        builder = "parquet" if path.suffix == ".parquet" else "json"
        return datasets.load_dataset(builder, data_files=str(path), split="train")

    return iter_dataset(open_dataset, shown)


def _hub_records(spec: str) -> tuple[str, str, Iterator[Conversation]]:
    """(name, the spec as shown, conversations) of `hf:NAME[:CONFIG][:SPLIT][#FIELD]`: the
    hub set's `messages` column (or FIELD), through the text corpora's hub access (offline
    mode, a quick reachability check, a bounded first answer, one line per failure)."""
    from gptbench.data.hub import hub_records, parse_hf_spec

    name, config, split, field = parse_hf_spec(spec)
    field = field if "#" in spec else "messages"
    shown = f"hf:{name}" + (f":{config}" if config else "") + f":{split}"
    return name, shown, read_records(hub_records(shown, name, config, split), shown, field)


def load_chat_corpus(spec: str | None, max_conversations: int | None = None) -> ChatCorpus:
    """The conversations `--data` names: FILE.jsonl, FILE.json/.parquet or hf:NAME."""
    s = (spec or "").strip()
    if not s:
        raise UserError("--sft needs --data: a .jsonl file of conversations (`messages` or `prompt`/`completion`), or hf:NAME")
    if s.startswith("hf:"):
        name, s, convs = _hub_records(s)
    else:
        path = Path(s).expanduser()
        name = path.name
        if not path.is_file():
            raise UserError(f"{s} is not a file; --sft reads conversations from a .jsonl/.json/.parquet file or hf:NAME")
        if path.suffix in (".json", ".parquet"):
            convs = read_records(_local_records(path, s), s)
        else:
            convs = read_jsonl(path, s)
    out = []
    for conv in convs:
        out.append(conv)
        if max_conversations is not None and len(out) >= max_conversations:
            break
    if not out:
        raise UserError(f"{s} holds no conversations; write one JSON record per line")
    blob = json.dumps([[(m.role, m.content) for m in c] for c in out], ensure_ascii=False).encode()
    return ChatCorpus(s, name, out, hashlib.sha256(blob).hexdigest())
