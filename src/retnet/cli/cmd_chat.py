"""``retnet chat MODEL_DIR``: an interactive loop; the recurrent state is kept between turns."""

from __future__ import annotations

import argparse
import sys

from retnet.cli.chat_session import ChatSession
from retnet.cli.cmd_generate import add_sampling_args
from retnet.cli.flags import device_from_flag, quantize_from_flag
from retnet.cli.model_dir import load_model_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "chat", help="interactive chat; each turn costs only its new tokens (recurrent state is kept)"
    )
    p.add_argument("model_dir", help="model directory (e.g. runs/shakespeare)")
    add_sampling_args(p, max_tokens=200)
    p.add_argument("--system", default="", help="text fed once before the first turn")
    p.add_argument("--user-prefix", default="", help="text put before each user turn")
    p.add_argument("--user-suffix", default="\n\n", help="text put after each user turn (default: a blank line)")
    p.add_argument("--stop", default="\n\n", help="a reply ends at this string (default: a blank line)")
    p.set_defaults(func=run)


def _unescape(text: str) -> str:
    """Let flags spell newlines and tabs as \\n and \\t."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def run(args: argparse.Namespace) -> int:
    dev = device_from_flag(args.device)
    from retnet.models.decode_step import make_decode_step

    model, tokenizer = load_model_dir(args.model_dir, dev)
    model = quantize_from_flag(model, args.quantize, dev)
    session = ChatSession(
        model,
        tokenizer,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        max_new_tokens=args.max_tokens,
        stop=_unescape(args.stop) or None,
        user_prefix=_unescape(args.user_prefix),
        user_suffix=_unescape(args.user_suffix),
        device=dev,
        decode_step=make_decode_step(model, compile=args.compile),
    )
    if args.system:
        session.feed(tokenizer.encode(args.system))
    interactive = sys.stdin.isatty()
    if interactive:
        print("chat: empty line or Ctrl-D ends", file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", flush=True, file=sys.stderr)
        line = sys.stdin.readline()
        if not line or not line.strip():
            break
        for piece in session.turn(line.rstrip("\n")):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        if interactive:
            state_bytes = session.state_bytes()
            print(
                f"[{session.tokens_processed_last_turn} tokens this turn, {len(session.history)} total, "
                f"state {state_bytes / 1024:.0f} KiB]",
                file=sys.stderr,
            )
    return 0
