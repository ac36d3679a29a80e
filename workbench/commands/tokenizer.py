"""`gptbench tokenizer train|stats`: train a byte-level BPE, compare tokenizers on a corpus."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

from gptbench.errors import UserError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "tokenizer",
        help="train a BPE tokenizer or compare tokenizers on a corpus",
        description="Train a byte-level BPE tokenizer, or compare tokenizers' bytes/token on a corpus.",
    )
    sub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", parser_class=type(p))
    p.set_defaults(func=lambda args: _no_action(p))

    t = sub.add_parser("train", help="train a byte-level BPE on a corpus and save it to a folder")
    t.add_argument("--corpus", default="default", help="the corpus, as for train --data (default: the Python stdlib sources)")
    t.add_argument("--vocab-size", type=int, required=True, help="ids in all, including <|endoftext|> (>= 257)")
    t.add_argument("--out", required=True, help="folder to write tokenizer.json + tokenizer.tiktoken into")
    t.add_argument("--max-docs", type=int, default=None, help="use only the first N documents")
    t.add_argument("--force", action="store_true", help="overwrite a tokenizer already in --out")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("stats", help="bytes/token of char, byte, gpt2 and given tokenizers on a corpus")
    s.add_argument("--corpus", default="default", help="the corpus, as for train --data (default: the Python stdlib sources)")
    s.add_argument("--tokenizer", action="append", default=[], metavar="SPEC",
                   help="another tokenizer to compare (bpe:PATH, bpe:N, gpt2:PATH, ...); repeatable")
    s.add_argument("--max-docs", type=int, default=None, help="use only the first N documents")
    s.add_argument("--json", action="store_true", help="print the rows as JSON")
    s.set_defaults(func=cmd_stats)
    for action in (t, s):  # every command takes --runs-dir (the tokenizer actions read no run)
        action.add_argument("--runs-dir", default=argparse.SUPPRESS, help="directory holding runs (unused here)")


def _no_action(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _positive(label: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise UserError(f"{label} must be a positive integer, got {value}")


def _pieces(corpus):
    from gptbench.tokenizers.pieces import split_text

    return [p for d in corpus.materialize() for p in split_text(d, 1 << 20)]


STATS_SAMPLE_CHARS = 16 << 20  # bytes/token after training is measured on (at most) this much text


def _count_tokens(tok, docs: Iterable[str], limit: int = STATS_SAMPLE_CHARS) -> tuple[int, int]:
    """(tokens, UTF-8 bytes) of the first `limit` characters of `docs` (whole pieces),
    encoded a few 1 MB pieces per thread at a time: never a second copy of the corpus."""
    from gptbench.tokenizers.pieces import split_text

    threads = os.cpu_count() or 1
    tokens = n_bytes = chars = 0
    batch: list[str] = []
    for piece in (p for doc in docs for p in split_text(doc, 1 << 20)):
        if chars >= limit:
            break
        batch.append(piece)
        chars += len(piece)
        n_bytes += len(piece.encode("utf-8", errors="replace"))
        if len(batch) >= 2 * threads:
            tokens += sum(len(a) for a in tok.encode_arrays(batch, num_threads=threads))
            batch.clear()
    return tokens + sum(len(a) for a in tok.encode_arrays(batch, num_threads=threads)), n_bytes


def cmd_train(args: argparse.Namespace) -> int:
    from gptbench.data import load_corpus
    from gptbench.tokenizers.bpe import check_vocab_size, train_bpe
    from gptbench.tokenizers.pieces import split_text

    check_vocab_size(args.vocab_size)
    _positive("--max-docs", args.max_docs)
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder")
    if (out / "tokenizer.json").exists() and not args.force:
        raise UserError(f"{out} already holds a tokenizer.json; pass --force to overwrite or pick another --out")
    corpus = load_corpus(args.corpus, max_docs=args.max_docs)
    t0 = time.perf_counter()
    tok = train_bpe((p for d in corpus.reread() for p in split_text(d, 1 << 16)), args.vocab_size)
    seconds = time.perf_counter() - t0
    n_bytes = corpus.n_bytes if corpus.n_bytes is not None else sum(len(d.encode("utf-8")) for d in corpus.reread())
    n_tokens, sample_bytes = _count_tokens(tok, corpus.reread())
    tok.save(out)
    short = "" if tok.vocab_size == args.vocab_size else f" (the corpus ran out of pairs before {args.vocab_size})"
    sampled = "" if sample_bytes >= n_bytes else f" (on its first {sample_bytes / 1e6:.0f} MB)"
    print(
        f"trained {tok.spec}{short} on {corpus.name} ({n_bytes / 1e6:.2f} MB, {corpus.n_docs} docs) in {seconds:.1f} s: "
        f"{sample_bytes / max(n_tokens, 1):.2f} bytes/token{sampled}"
    )
    print(f"saved {out / 'tokenizer.json'} and {out / 'tokenizer.tiktoken'}; use it with --tokenizer bpe:{out}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from gptbench.data import load_corpus
    from gptbench.tokenizers.registry import TokenizerSpec, build_tokenizer

    _positive("--max-docs", args.max_docs)
    for spec in args.tokenizer:  # a misspelt tokenizer is refused before the corpus is read
        TokenizerSpec.parse(spec)
    corpus = load_corpus(args.corpus, max_docs=args.max_docs)
    pieces = _pieces(corpus)
    n_bytes = sum(len(p.encode("utf-8")) for p in pieces)
    specs: list[str] = []
    has_gpt2 = any(t.startswith("gpt2:") for t in args.tokenizer)
    for spec in ["char", "byte", *([] if has_gpt2 else ["gpt2"]), *args.tokenizer]:
        if spec not in specs:
            specs.append(spec)
    rows: list[dict[str, Any]] = []
    for spec in specs:
        try:
            tok = build_tokenizer(spec, corpus_text=corpus.text)
        except UserError as exc:
            if spec == "gpt2" and spec not in args.tokenizer:
                rows.append({"tokenizer": spec, "error": str(exc)})
                continue
            raise
        t0 = time.perf_counter()
        n_tokens = sum(len(a) for a in tok.encode_arrays(pieces, num_threads=os.cpu_count() or 1))
        seconds = time.perf_counter() - t0
        rows.append({
            "tokenizer": tok.spec,
            "vocab_size": tok.vocab_size,
            "tokens": n_tokens,
            "bytes_per_token": round(n_bytes / max(n_tokens, 1), 4),
            "mb_per_s": round(n_bytes / 1e6 / max(seconds, 1e-9), 2),
        })
    if args.json:
        print(json.dumps({"corpus": corpus.name, "bytes": n_bytes, "rows": rows}, indent=2))
        return 0
    print(f"corpus {corpus.name}: {n_bytes:,} bytes, {len(corpus.materialize()):,} documents")
    print(f"{'tokenizer':<14} {'vocab':>8} {'tokens':>12} {'bytes/token':>12} {'MB/s':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['tokenizer']:<14} unavailable: {r['error']}")
        else:
            print(f"{r['tokenizer']:<14} {r['vocab_size']:>8,} {r['tokens']:>12,} {r['bytes_per_token']:>12.3f} {r['mb_per_s']:>8.1f}")
    return 0
