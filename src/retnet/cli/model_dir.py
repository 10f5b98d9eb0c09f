"""Loading a model directory (config.json + model.safetensors + tokenizer.json) for the CLI commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from retnet.cli.errors import CLIError
from retnet.data.tokenizers import TOKENIZER_FILE, Tokenizer
from retnet.models import RetNetForCausalLM

TRAINING_INFO_FILE = "training.json"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda: CUDA is not available")
    return torch.device(name)


def check_model_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise CLIError(f"model directory {str(path)!r} does not exist")
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise CLIError(f"{str(path)!r} is not a model directory (needs config.json and model.safetensors)")
    return path


def load_tokenizer(path: Path, vocab_size: int) -> Tokenizer:
    """The directory's ``tokenizer.json``; a 256-token model without one gets the byte tokenizer."""
    if (path / TOKENIZER_FILE).is_file():
        try:
            tok = Tokenizer.load(path)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    elif vocab_size == 256:
        tok = Tokenizer.byte()
    else:
        raise CLIError(f"model directory {str(path)!r} has no {TOKENIZER_FILE}")
    if tok.vocab_size != vocab_size:
        raise CLIError(
            f"{str(path / TOKENIZER_FILE)!r} has {tok.vocab_size} tokens but the model {vocab_size}: "
            "they belong to different models"
        )
    return tok


def load_model_dir(path: str | Path, device: torch.device | None = None) -> tuple[RetNetForCausalLM, Tokenizer]:
    """Model (in eval mode) and tokenizer from a model directory; errors name the directory."""
    path = check_model_dir(path)
    try:
        model = RetNetForCausalLM.from_pretrained(str(path))
    except Exception as exc:
        raise CLIError(f"cannot load the model in {str(path)!r}: {str(exc).splitlines()[0]}") from None
    model.eval()
    if device is not None:
        model.to(device)
    return model, load_tokenizer(path, model.config.vocab_size)


def training_info(path: Path) -> dict[str, Any] | None:
    """The run's ``training.json`` (settings and final figures), if it has one."""
    f = path / TRAINING_INFO_FILE
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
