"""Loading a model directory (config.json + model.safetensors + tokenizer.json) for the CLI commands.

The layout, reading and checks are :mod:`retnet.models.directory`'s; here its errors become one-line
:class:`CLIError` messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from retnet.cli.errors import CLIError
from retnet.data.tokenizers import Tokenizer
from retnet.models import RetNetConfig, RetNetForCausalLM
from retnet.models import directory as layout
from retnet.models.config import load_model_config


def check_model_dir(path: str | Path) -> Path:
    """``path`` when it holds config.json and model.safetensors; a :class:`CLIError` saying what is missing."""
    try:
        return layout.check_model_dir(path)
    except layout.CheckpointError as exc:
        raise CLIError(str(exc)) from None


def read_model_config(path: Path) -> RetNetConfig:
    """The validated config of a model directory; a bad config.json is a one-line error naming file and field."""
    try:
        return load_model_config(path)
    except layout.CheckpointError as exc:
        raise CLIError(str(exc)) from None


def load_tokenizer(path: Path, vocab_size: int, eos_token_id: int | None = None) -> Tokenizer:
    """The directory's ``tokenizer.json``; a 256-token model without one gets the byte tokenizer. The
    tokenizer may have fewer tokens than the model (padded embeddings), not more. ``eos_token_id`` (the
    config's) joins the tokenizer's end-of-sequence ids."""
    tokenizer_file = path / layout.TOKENIZER_FILE
    if tokenizer_file.exists():  # not is_file(): a link to a device is an error, not an absent tokenizer
        try:
            tok = Tokenizer.load(path, eos_token_id)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    elif vocab_size == 256:
        tok = Tokenizer.byte(eos_token_id)
    else:
        raise CLIError(f"model directory {str(path)!r} has no {layout.TOKENIZER_FILE}")
    if tok.vocab_size > vocab_size:
        raise CLIError(
            f"{str(tokenizer_file)!r} has {tok.vocab_size} tokens but the model only {vocab_size}: "
            "they belong to different models"
        )
    return tok


def load_model_dir(path: str | Path, device: torch.device | None = None) -> tuple[RetNetForCausalLM, Tokenizer]:
    """Model (in eval mode) and tokenizer from a model directory; errors name the directory or file."""
    path = check_model_dir(path)
    try:
        model = RetNetForCausalLM.from_pretrained(path, map_location=device or "cpu")
    except layout.CheckpointError as exc:
        raise CLIError(str(exc).splitlines()[0]) from None
    except Exception as exc:
        raise CLIError(f"cannot load the model in {str(path)!r}: {str(exc).splitlines()[0]}") from None
    return model, load_tokenizer(path, model.config.vocab_size, model.config.eos_token_id)


def training_info(path: Path) -> dict[str, Any] | None:
    """The run's ``training.json`` (settings and final figures), if it has a readable one."""
    try:
        return layout.read_json_file(path / layout.TRAINING_INFO_FILE, what="training info")
    except layout.CheckpointError:
        return None
