"""``retnet convert --from torchscale CHECKPOINT OUT_DIR``: official checkpoints to a retnet model directory."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from retnet.cli.errors import CLIError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _embed_scale(text: str) -> float | str:
    if text == "sqrt":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number or 'sqrt', got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number or 'sqrt', got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert an official torchscale RetNet checkpoint into a retnet model directory",
        description=(
            "Reads a state dict of microsoft/torchscale's RetNetDecoder (.pt/.pth via torch.load(weights_only=True), "
            "or .safetensors; bare or nested under 'model'/'state_dict'/'module'/'model_state_dict'; any key prefix "
            "such as fairseq's 'decoder.'), infers the shapes and writes config.json + model.safetensors. "
            "Options a state dict cannot record must match the training run."
        ),
    )
    p.add_argument("--from", dest="source_format", required=True, choices=["torchscale"], help="checkpoint format")
    p.add_argument("checkpoint", type=Path, help="the torchscale state dict (.pt, .pth, .bin or .safetensors)")
    p.add_argument("out_dir", type=Path, help="model directory to write")
    p.add_argument(
        "--activation",
        default="swish",
        choices=["swish", "gelu", "relu"],
        help="FFN activation, torchscale's activation_fn (default swish, as in its fairseq recipes)",
    )
    p.add_argument(
        "--embed-scale",
        type=_embed_scale,
        default=1.0,
        help="embedding multiplier: 1 (torchscale RetNetConfig default no_scale_embedding=True) or 'sqrt' for "
        "sqrt(hidden size) (no_scale_embedding=False, the default of torchscale's fairseq LM recipe)",
    )
    p.add_argument("--norm-eps", type=float, default=1e-6, help="torchscale's layernorm_eps (default 1e-6)")
    p.add_argument(
        "--num-heads", type=int, default=None, help="head count, only for checkpoints without retnet_rel_pos.decay"
    )
    p.add_argument(
        "--no-normalize-decay",
        action="store_true",
        help="do not reproduce torchscale's decay normalisation (changes outputs only through the norm eps)",
    )
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype of the written weights")
    p.add_argument("--chunk-size", type=int, default=None, help="chunk length of chunkwise prefill (default 64)")
    for name in ("bos", "eos", "pad"):
        p.add_argument(f"--{name}-token-id", type=int, default=None, help=f"{name} token id to record in config.json")
    p.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="a Hugging Face tokenizer.json to copy into the model directory (torchscale checkpoints carry none; "
        "`retnet generate` and `retnet serve` need one); at most as many tokens as the model's vocabulary",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing model directory")
    p.set_defaults(func=run)


def read_tokenizer_arg(path: Path) -> tuple[str, int]:
    """The text of the ``--tokenizer`` file and its token count; a one-line error unless it loads with
    ``tokenizers``."""
    from retnet.models.directory import MAX_TOKENIZER_BYTES, CheckpointError, parse_tokenizer, read_text

    try:
        text = read_text(path, MAX_TOKENIZER_BYTES, what="--tokenizer file")
        return text, parse_tokenizer(text, path).get_vocab_size(with_added_tokens=True)
    except CheckpointError as exc:
        raise CLIError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    from retnet.models.convert_torchscale import ConversionError, convert_checkpoint
    from retnet.models.directory import (
        CONFIG_FILE,
        TOKENIZER_FILE,
        CheckpointError,
        atomic_write_text,
        write_tokenizer_config,
    )

    if (args.out_dir / CONFIG_FILE).exists() and not args.force:
        raise CLIError(f"{args.out_dir} already holds a model ({CONFIG_FILE}); pass --force to overwrite it")
    if not args.norm_eps >= 0:
        raise CLIError(f"--norm-eps must be >= 0, got {args.norm_eps}")
    tokenizer = read_tokenizer_arg(args.tokenizer) if args.tokenizer is not None else None  # before converting
    overrides = {
        f"{name}_token_id": getattr(args, f"{name}_token_id")
        for name in ("bos", "eos", "pad")
        if getattr(args, f"{name}_token_id") is not None
    }
    if args.chunk_size is not None:
        overrides["chunk_size"] = args.chunk_size
    try:
        model, report = convert_checkpoint(
            args.checkpoint,
            activation=args.activation,
            embed_scale=args.embed_scale,
            norm_eps=args.norm_eps,
            num_heads=args.num_heads,
            normalize_decay=not args.no_normalize_decay,
            dtype=DTYPES[args.dtype],
            **overrides,
        )
        if tokenizer is not None and tokenizer[1] > model.config.vocab_size:
            raise CLIError(
                f"--tokenizer {args.tokenizer} has {tokenizer[1]} tokens but the checkpoint's vocabulary only "
                f"{model.config.vocab_size}: they belong to different models"
            )
        model.save_pretrained(args.out_dir)
        if tokenizer is not None:
            atomic_write_text(args.out_dir / TOKENIZER_FILE, tokenizer[0])
            write_tokenizer_config(args.out_dir)  # tokenizer_config.json, for transformers' AutoTokenizer
    except (ConversionError, CheckpointError, OSError) as exc:
        raise CLIError(str(exc)) from exc
    c = model.config
    where = f" under key {report.nested_key!r}" if report.nested_key else ""
    where += f" with prefix {report.prefix!r}" if report.prefix else ""
    print(
        f"read {args.checkpoint}{where}: {c.num_layers} layers, hidden {c.hidden_size}, {c.num_heads} heads, "
        f"value dim {c.value_dim}, ffn dim {c.ffn_dim}, vocab {c.vocab_size}, {c.decay} decay, "
        f"rotation base {c.rotary_base:g}, {'tied' if c.tie_word_embeddings else 'untied'} output projection"
        + (", layernorm_embedding" if c.layernorm_embedding else "")
    )
    for note in report.notes:
        print(f"note: {note}")
    print(f"wrote {args.out_dir} ({model.num_parameters():,} parameters, {args.dtype})")
    if tokenizer is not None:
        print(f"copied {args.tokenizer} ({tokenizer[1]} tokens) to {args.out_dir / TOKENIZER_FILE}")
    return 0
