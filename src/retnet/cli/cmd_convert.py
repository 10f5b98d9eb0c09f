"""``retnet convert --from {torchscale,fla,syncdoth} SOURCE OUT_DIR`` and ``retnet convert --to fla MODEL_DIR OUT_DIR``:
public RetNet checkpoints to a retnet model directory and back."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from retnet.cli.errors import CLIError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
SOURCES = ("torchscale", "fla", "syncdoth")
TARGETS = ("fla",)
# Options a torchscale state dict cannot record; fla and syncdoth configs record them.
TORCHSCALE_ONLY = {
    "activation": "--activation",
    "embed_scale": "--embed-scale",
    "norm_eps": "--norm-eps",
    "num_heads": "--num-heads",
}
FROM_ONLY = {
    **TORCHSCALE_ONLY,
    "no_normalize_decay": "--no-normalize-decay",
    "chunk_size": "--chunk-size",
    "bos_token_id": "--bos-token-id",
    "eos_token_id": "--eos-token-id",
    "pad_token_id": "--pad-token-id",
}
TORCHSCALE_DEFAULTS = {"activation": "swish", "embed_scale": 1.0, "norm_eps": 1e-6}


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
        help="convert torchscale, flash-linear-attention or syncdoth RetNet checkpoints to a retnet model directory "
        "(and back to fla's format)",
        description=(
            "--from torchscale: a state dict of microsoft/torchscale's RetNetDecoder (.pt/.pth via "
            "torch.load(weights_only=True), or .safetensors; bare or nested under 'model'/'state_dict'/'module'/"
            "'model_state_dict'; any key prefix such as fairseq's 'decoder.'); options a state dict cannot record "
            "must match the training run. --from fla / --from syncdoth: a Hugging Face checkpoint directory of "
            "flash-linear-attention's RetNet (fla.models.retnet) or of syncdoth/RetNet (config.json and "
            "safetensors or pytorch_model.bin weights, sharded or not); its tokenizer.json comes along. "
            "--to fla: a retnet model directory to fla's format (for models converted from fla or built with "
            "rotary_frequencies='rope')."
        ),
    )
    way = p.add_mutually_exclusive_group(required=True)
    way.add_argument("--from", dest="source_format", choices=SOURCES, help="format of SOURCE")
    way.add_argument("--to", dest="target_format", choices=TARGETS, help="write SOURCE (a retnet model dir) as this")
    p.add_argument("source", type=Path, help="torchscale state dict file, fla/syncdoth directory, or (--to) model dir")
    p.add_argument("out_dir", type=Path, help="directory to write")
    p.add_argument(
        "--activation",
        default=None,
        choices=["swish", "gelu", "relu"],
        help="torchscale only: FFN activation, torchscale's activation_fn (default swish, as in its fairseq recipes)",
    )
    p.add_argument(
        "--embed-scale",
        type=_embed_scale,
        default=None,
        help="torchscale only: embedding multiplier: 1 (default; torchscale RetNetConfig's no_scale_embedding=True) "
        "or 'sqrt' for sqrt(hidden size) (no_scale_embedding=False, the default of torchscale's fairseq LM recipe)",
    )
    p.add_argument("--norm-eps", type=float, default=None, help="torchscale only: layernorm_eps (default 1e-6)")
    p.add_argument(
        "--num-heads",
        type=int,
        default=None,
        help="torchscale only: head count, for checkpoints without retnet_rel_pos.decay",
    )
    p.add_argument(
        "--no-normalize-decay",
        action="store_true",
        help="torchscale/syncdoth: do not reproduce their decay normalisation (changes outputs only through the "
        "norm eps)",
    )
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default=None,
        help="dtype of the written weights (default float32; --to: the model's own)",
    )
    p.add_argument("--chunk-size", type=int, default=None, help="chunk length of chunkwise prefill (default 64)")
    for name in ("bos", "eos", "pad"):
        p.add_argument(
            f"--{name}-token-id", type=int, default=None, help=f"{name} token id to record (default: the source's)"
        )
    p.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="a Hugging Face tokenizer.json to put in the model directory instead of the source directory's "
        "(torchscale checkpoints carry none; `retnet generate` and `retnet serve` need one); at most as many "
        "tokens as the model's vocabulary",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing model directory")
    p.set_defaults(func=run)


def read_tokenizer_arg(path: Path, what: str = "--tokenizer file") -> tuple[str, Any] | None:
    """The text of a tokenizer file (or a directory's ``tokenizer.json``, ``None`` when it has none) and its
    ``tokenizers.Tokenizer``; a one-line error unless it loads."""
    from retnet.models.convert_common import read_source_tokenizer
    from retnet.models.directory import CheckpointError

    try:
        return read_source_tokenizer(path, what)
    except CheckpointError as exc:
        raise CLIError(str(exc)) from None


def write_tokenizer(out_dir: Path, text: str, tokenizer: Any, config: Any) -> None:
    """``tokenizer.json`` and ``tokenizer_config.json`` (special tokens from the config's ids where the
    tokenizer has them)."""
    from retnet.models.directory import TOKENIZER_FILE, atomic_write_text, write_tokenizer_config

    atomic_write_text(out_dir / TOKENIZER_FILE, text)
    specials = {}
    for name in ("bos", "eos", "pad"):
        token_id = getattr(config, f"{name}_token_id", None)
        token = tokenizer.id_to_token(token_id) if token_id is not None else None
        if token is not None:
            specials[f"{name}_token"] = token
    try:
        write_tokenizer_config(out_dir, **specials)
    except ValueError:  # a special token outside the vocabulary proper (e.g. only a byte fallback)
        write_tokenizer_config(out_dir)


def _check_out_dir(args: argparse.Namespace) -> None:
    from retnet.models.directory import CONFIG_FILE

    if args.out_dir.resolve() == args.source.resolve():
        raise CLIError(f"OUT_DIR {args.out_dir} is the source; write the conversion elsewhere")
    if (args.out_dir / CONFIG_FILE).exists() and not args.force:
        raise CLIError(f"{args.out_dir} already holds a model ({CONFIG_FILE}); pass --force to overwrite it")


def run(args: argparse.Namespace) -> int:
    _check_out_dir(args)
    if args.target_format is not None:
        return run_export(args)
    return run_import(args)


def _convert(args: argparse.Namespace, overrides: dict[str, Any]) -> tuple[Any, Any, str]:
    """The converted model, its report and a description of where it was read."""
    from retnet.models import convert_fla, convert_syncdoth, convert_torchscale

    dtype = DTYPES[args.dtype or "float32"]
    if args.source_format == "torchscale":
        options = {k: getattr(args, k) for k in TORCHSCALE_ONLY if getattr(args, k) is not None}
        model, report = convert_torchscale.convert_checkpoint(
            args.source,
            **{**TORCHSCALE_DEFAULTS, **options},
            normalize_decay=not args.no_normalize_decay,
            dtype=dtype,
            **overrides,
        )
        where = f" under key {report.nested_key!r}" if report.nested_key else ""
        where += f" with prefix {report.prefix!r}" if report.prefix else ""
        return model, report, where
    given = [flag for key, flag in TORCHSCALE_ONLY.items() if getattr(args, key) is not None]
    if given:
        raise CLIError(f"{given[0]} applies to --from torchscale only; {args.source_format} configs record it")
    if args.source_format == "fla":
        if args.no_normalize_decay:
            raise CLIError("--no-normalize-decay applies to --from torchscale/syncdoth only (fla has none)")
        model, report, _ = convert_fla.convert_fla_directory(args.source, dtype=dtype, **overrides)
    else:
        if args.no_normalize_decay:
            overrides["normalize_decay"] = False
        model, report, _ = convert_syncdoth.convert_syncdoth_directory(args.source, dtype=dtype, **overrides)
    return model, report, ""


def run_import(args: argparse.Namespace) -> int:
    from retnet.models.convert_common import ConversionError
    from retnet.models.directory import TOKENIZER_FILE, CheckpointError

    if args.norm_eps is not None and not args.norm_eps >= 0:
        raise CLIError(f"--norm-eps must be >= 0, got {args.norm_eps}")
    # Read the tokenizer before converting: a bad one costs no conversion and writes nothing.
    tokenizer, tokenizer_from = None, args.tokenizer
    if args.tokenizer is not None:
        tokenizer = read_tokenizer_arg(args.tokenizer)
    elif args.source_format != "torchscale":
        if not args.source.is_dir():
            raise CLIError(f"checkpoint directory not found: {args.source}")
        tokenizer = read_tokenizer_arg(args.source, what="source tokenizer file")
        tokenizer_from = args.source / TOKENIZER_FILE if tokenizer is not None else None
    overrides: dict[str, Any] = {
        f"{name}_token_id": getattr(args, f"{name}_token_id")
        for name in ("bos", "eos", "pad")
        if getattr(args, f"{name}_token_id") is not None
    }
    if args.chunk_size is not None:
        overrides["chunk_size"] = args.chunk_size
    try:
        model, report, where = _convert(args, overrides)
        count = tokenizer[1].get_vocab_size(with_added_tokens=True) if tokenizer is not None else 0
        if count > model.config.vocab_size:
            raise CLIError(
                f"tokenizer {tokenizer_from} has {count} tokens but the checkpoint's vocabulary only "
                f"{model.config.vocab_size}: they belong to different models"
            )
        model.save_pretrained(args.out_dir)
        if tokenizer is not None:
            write_tokenizer(args.out_dir, tokenizer[0], tokenizer[1], model.config)
    except (ConversionError, CheckpointError, OSError) as exc:
        raise CLIError(str(exc)) from exc
    c = model.config
    print(
        f"read {args.source}{where}: {c.num_layers} layers, hidden {c.hidden_size}, {c.num_heads} heads, "
        + (f"key dim {c.key_dim}, " if c.key_dim is not None else "")
        + f"value dim {c.value_dim}, ffn dim {c.ffn_dim}, vocab {c.vocab_size}, {c.decay} decay, "
        f"rotation base {c.rotary_base:g}"
        + (f" ({c.rotary_frequencies} frequencies)" if c.rotary_frequencies != "retnet" else "")
        + f", {'tied' if c.tie_word_embeddings else 'untied'} output projection"
        + (", layernorm_embedding" if c.layernorm_embedding else "")
    )
    for note in report.notes:
        print(f"note: {note}")
    print(f"wrote {args.out_dir} ({model.num_parameters():,} parameters, {args.dtype or 'float32'})")
    if tokenizer is not None:
        print(f"copied {tokenizer_from} ({count} tokens) to {args.out_dir / TOKENIZER_FILE}")
    elif args.source_format != "torchscale":
        print(f"note: no {TOKENIZER_FILE} in {args.source}; pass --tokenizer FILE for generate/serve")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from retnet.cli.model_dir import check_model_dir
    from retnet.models import RetNetForCausalLM
    from retnet.models.convert_common import ConversionError
    from retnet.models.convert_fla import save_fla_directory
    from retnet.models.directory import CheckpointError

    misplaced = [flag for key, flag in FROM_ONLY.items() if getattr(args, key) not in (None, False)]
    if misplaced:
        raise CLIError(f"{misplaced[0]} applies to --from only")
    check_model_dir(args.source)
    tokenizer = read_tokenizer_arg(args.tokenizer if args.tokenizer is not None else args.source)
    try:
        model = RetNetForCausalLM.from_pretrained(args.source, dtype=DTYPES[args.dtype] if args.dtype else None)
        save_fla_directory(model, args.out_dir)
        if tokenizer is not None:
            write_tokenizer(args.out_dir, tokenizer[0], tokenizer[1], model.config)
    except (ConversionError, CheckpointError, OSError) as exc:
        raise CLIError(str(exc)) from exc
    print(f"wrote {args.out_dir} in flash-linear-attention's RetNet format ({model.num_parameters():,} parameters)")
    if tokenizer is not None:
        print(f"copied the tokenizer to {args.out_dir}")
    return 0
