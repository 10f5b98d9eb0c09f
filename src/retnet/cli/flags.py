"""Checked command-line flags: numbers within bounds at parse time, and the ``--device`` flag.

A number flag's ``type`` parses and checks it, so argparse names the flag in a one-line error before any
work is done. The bounds are :class:`retnet.training.config.Bounds`, the same rules config files obey.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from retnet.cli.errors import CLIError
from retnet.training.config import UINT64_MAX, Bounds, SettingError, check_number

SEED = Bounds(0, UINT64_MAX)
POSITIVE = Bounds(1)


def number(bounds: Bounds) -> Callable[[str], int | float]:
    """An argparse ``type``: the flag's text as an int (or a finite float) within ``bounds``."""

    def parse(text: str) -> int | float:
        try:
            value: int | float = int(text) if bounds.integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be {'an integer' if bounds.integer else 'a number'}, got {text!r}"
            ) from None
        try:
            check_number("", value, bounds)
        except SettingError as exc:
            raise argparse.ArgumentTypeError(exc.problem) from None
        return value

    parse.__name__ = "int" if bounds.integer else "float"
    return parse


def device_from_flag(name: str) -> torch.device:
    """The ``--device`` flag resolved by the one device rule (:func:`retnet.training.distributed.pick_device`)."""
    from retnet.training.distributed import DeviceError, pick_device

    try:
        return pick_device(name)
    except DeviceError as exc:
        raise CLIError(f"--device {exc}") from None


def add_decode_speed_flags(parser: argparse.ArgumentParser) -> None:
    """``--compile`` and ``--quantize``: how the decode step runs (:mod:`retnet.models.decode_step`,
    :mod:`retnet.models.quantize`). One definition for every command that decodes."""
    from retnet.models.quantize import QUANTIZE_CHOICES

    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the decode step (CPU: inductor; CUDA: CUDA graphs); the first step pays the compile time",
    )
    parser.add_argument(
        "--quantize",
        choices=QUANTIZE_CHOICES,
        default="none",
        help="int8: int8 weights for every linear layer (CPU only; a quarter of the bytes a step reads)",
    )


def quantize_from_flag(model: torch.nn.Module, mode: str, device: torch.device | str) -> torch.nn.Module:
    """``model`` as ``--quantize`` asks (int8 refused off the CPU or for a non-float32 model: a CLIError)."""
    from retnet.models.quantize import QuantizeError, check_quantize, quantize_int8

    try:
        check_quantize(mode, device)
        return quantize_int8(model) if mode == "int8" else model
    except QuantizeError as exc:
        raise CLIError(str(exc)) from None
