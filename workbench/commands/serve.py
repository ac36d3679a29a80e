"""`gptbench serve`: an OpenAI-compatible HTTP server for a run, with continuous batching."""

from __future__ import annotations

import argparse
import sys

from gptbench.errors import UserError

EPILOG = """\
endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (runs trained with
--sft: the run's chat template, answers end at <|end|>; a base run answers 400
no_chat_template and is served through /v1/completions), GET /health.

examples:
  gptbench serve --run baby                                # http://127.0.0.1:8000
  curl localhost:8000/v1/completions -d '{"model": "baby", "prompt": "ROMEO:", "max_tokens": 32}'
  gptbench serve --run baby-chat --port 8001              # a chat run: /v1/chat/completions too
  curl -N localhost:8001/v1/chat/completions -d '{"messages": [{"role": "user", "content": "hi"}], "stream": true}'
  gptbench serve --run baby --host 0.0.0.0 --api-key "$KEY"  # reachable from other machines
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a run over an OpenAI-compatible HTTP API",
                       description="Serve a model over OpenAI's completions API, many clients batched together.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run to serve (its best checkpoint unless --checkpoint)")
    p.add_argument("--checkpoint", default="best", help="best | last | step-N (default best)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every request")
    p.add_argument("--backend", default="auto", help="auto | torch | mlx")
    p.add_argument("--device", default="auto", help="device (default auto)")
    p.add_argument("--max-batch", type=int, default=16, help="rows decoded together (default 16)")
    p.add_argument("--max-queue", type=int, default=64, help="rows waiting before requests get 429 (default 64)")
    p.add_argument("--max-tokens", type=int, default=None, help="largest max_tokens a request may ask (default: the context)")
    p.add_argument("--max-n", type=int, default=8, help="largest n a request may ask (default 8)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")
    p.set_defaults(func=run_serve)


def _check(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in [0, 65535], got {args.port}")
    for name in ("max_batch", "max_queue", "max_n", "max_body_bytes"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.max_tokens is not None and args.max_tokens < 0:
        raise UserError(f"--max-tokens must be >= 0, got {args.max_tokens}")
    if args.api_key is not None and not args.api_key.strip():
        raise UserError("--api-key is empty; give a key, or leave the flag out")


def run_serve(args: argparse.Namespace) -> int:
    _check(args)
    from gptbench.serving.server import LOCAL_HOSTS, address, bind, import_uvicorn, serve_foreground

    import_uvicorn()
    from gptbench.loading import load_model
    from gptbench.runstore import RunStore
    from gptbench.serving.app import ServeState, chat_format, create_app
    from gptbench.serving.protocol import Limits
    from gptbench.serving.scheduler import Scheduler

    loaded = load_model(RunStore(args.runs_dir), run=args.run, checkpoint=args.checkpoint, backend=args.backend,
                        device=args.device, batch_size=args.max_batch)
    if loaded.notice:
        print(f"gptbench: warning: {loaded.notice}", file=sys.stderr, flush=True)
    sock = bind(args.host, args.port)
    if args.host not in LOCAL_HOSTS and args.api_key is None:
        print(f"gptbench: warning: listening on {args.host} without --api-key: anyone who can reach this machine can use "
              "the model", file=sys.stderr, flush=True)
    cfg = loaded.backend.config
    state = ServeState(
        Scheduler(loaded.backend, loaded.tokenizer, max_batch=args.max_batch, max_queue=args.max_queue), loaded.tokenizer,
        args.run, cfg.block_size, cfg.vocab_size, Limits(args.max_body_bytes, None, args.max_tokens, args.max_n), args.api_key,
        chat_format(loaded.tokenizer),
    )
    mode = "completions and chat" if state.chat else "completions (a base run: no chat template)"
    print(f"serving {loaded.source} ({loaded.backend.describe()}) at {address(sock)}/v1  [{mode}]  (Ctrl+C stops)", flush=True)
    rc = serve_foreground(create_app(state), sock)
    print(f"stopped after {state.requests} requests", flush=True)
    return rc
