"""``retnet serve MODEL_DIR``: the OpenAI-compatible HTTP server (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from retnet.cli.errors import CLIError
from retnet.cli.flags import add_decode_speed_flags

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a model over the OpenAI API, with constant-memory stored conversations",
        description="Serve MODEL_DIR (config.json, model.safetensors, tokenizer.json) over an OpenAI-compatible "
        "HTTP API. A request may pass conversation_id (or store: true) to continue a stored conversation whose "
        "recurrent state lives in --data-dir.",
    )
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (default: env RETNET_API_KEY)")
    p.add_argument("--model-name", default=None, help="model id clients pass (default: the directory name)")
    p.add_argument("--data-dir", type=Path, default=None, help="conversation store (default: next to MODEL_DIR)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    add_decode_speed_flags(p)
    g = p.add_argument_group("limits")
    g.add_argument("--max-prompt-tokens", type=int, default=4096, help="new tokens per request")
    g.add_argument("--max-tokens", type=int, default=1024, dest="max_tokens_limit", help="largest max_tokens")
    g.add_argument("--default-max-tokens", type=int, default=256, help="chat max_tokens when not given")
    g.add_argument("--max-body-bytes", type=int, default=1 << 20)
    g.add_argument("--max-batch", type=int, default=64, help="sequences decoded together")
    g.add_argument("--max-queue", type=int, default=256, help="waiting requests before HTTP 429")
    g.add_argument("--prefill-chunk", type=int, default=256, help="prompt tokens per scheduler step")
    g.add_argument(
        "--progress-interval", type=float, default=1.0, dest="progress_interval_s",
        help="seconds between prefill progress comments on a streaming request (default 1)",
    )  # fmt: skip
    g.add_argument(
        "--request-timeout", type=float, default=30.0, help="seconds to receive a request's headers, and its body"
    )
    s = p.add_argument_group("conversation store")
    s.add_argument("--max-conversations", type=int, default=10_000)
    s.add_argument("--max-store-bytes", type=int, default=4 << 30)
    s.add_argument("--conversation-ttl", type=float, default=7 * 24 * 3600.0, help="seconds idle before expiry")
    s.add_argument("--state-cache-bytes", type=int, default=256 << 20, help="hot states kept in memory too")
    s.add_argument(
        "--store", default="sqlite", metavar="sqlite|redis://HOST:PORT/DB",
        help="where conversation states live: 'sqlite' (files under --data-dir, default) or a Redis server that "
        "several server processes share (pip install 'retnet[redis]')",
    )  # fmt: skip
    s.add_argument(
        "--redis-lock-ttl", type=float, default=30.0, help="seconds before a dead process's turn lock expires"
    )
    x = p.add_argument_group("prefix states")
    x.add_argument(
        "--prefix-cache-bytes", type=int, default=256 << 20, help="memory for states of shared prompt prefixes (0: off)"
    )
    x.add_argument("--prefix-every", type=int, default=256, help="also keep a prefix state every N prompt tokens")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from retnet.models import CheckpointError
    from retnet.serving.app import create_app
    from retnet.serving.config import ServerConfig
    from retnet.serving.store import StoreError
    from retnet.serving.transport import bind, serve

    if not 0 < args.port < 65536:
        raise CLIError(f"--port must be in 1..65535, got {args.port}")
    api_key = (args.api_key if args.api_key is not None else os.environ.get("RETNET_API_KEY")) or None
    if args.host not in LOOPBACK and api_key is None:
        logging.getLogger("retnet.serving").warning("serving on %s without an API key", args.host)
    try:  # bound first: a taken port is reported before the model loads, and nothing else can take it meanwhile
        sock = bind(args.host, args.port)
    except OSError as exc:
        raise CLIError(f"cannot listen on {args.host}:{args.port} (--host/--port): {exc.strerror or exc}") from exc
    try:
        config = ServerConfig(
            model_dir=args.model_dir,
            model_name=args.model_name,
            data_dir=args.data_dir,
            api_key=api_key,
            dtype=args.dtype,
            threads=args.threads,
            compile=args.compile,
            quantize=args.quantize,
            max_prompt_tokens=args.max_prompt_tokens,
            max_tokens_limit=args.max_tokens_limit,
            default_max_tokens=args.default_max_tokens,
            max_body_bytes=args.max_body_bytes,
            request_timeout_s=args.request_timeout,
            max_batch=args.max_batch,
            max_queue=args.max_queue,
            prefill_chunk=args.prefill_chunk,
            progress_interval_s=args.progress_interval_s,
            max_conversations=args.max_conversations,
            max_store_bytes=args.max_store_bytes,
            conversation_ttl_s=args.conversation_ttl,
            state_cache_bytes=args.state_cache_bytes,
            store=args.store,
            redis_lock_ttl_s=args.redis_lock_ttl,
            prefix_cache_bytes=args.prefix_cache_bytes,
            prefix_every=args.prefix_every,
        )
        app = create_app(config)
    except (ValueError, CheckpointError, StoreError, OSError) as exc:
        sock.close()
        raise CLIError(str(exc)) from exc
    logging.basicConfig(level=args.log_level.upper())
    where = config.data_dir if config.store == "sqlite" else app.state.store.where
    print(f"retnet serve: {config.model_name} on http://{args.host}:{args.port} (data: {where})", flush=True)
    serve(app, sock, log_level=args.log_level, request_timeout_s=config.request_timeout_s)
    return 0
