"""Command-line pieces the benchmarks share: list-valued argument types and the common flags."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from retnet_benchmarks.report import DEFAULT_OUT_DIR


def positive_int(text: str) -> int:
    """One positive integer (an ``argparse`` type)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def positive_ints(text: str) -> list[int]:
    """Comma-separated positive integers, at least one (``1024,8192``)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def positive_ints_or_none(text: str) -> list[int]:
    """Comma-separated positive integers, or ``none`` for no cases."""
    return [] if text.strip().lower() == "none" else positive_ints(text)


def comma_choices(known: Sequence[str], what: str, allow_none: bool = False) -> Callable[[str], list[str]]:
    """An ``argparse`` type: comma-separated names among ``known``, at least one (or ``none`` for no names,
    where ``allow_none``); an unknown name is an error listing the known ones."""

    def parse(text: str) -> list[str]:
        if allow_none and text.strip().lower() == "none":
            return []
        names = [n.strip() for n in text.split(",") if n.strip()]
        if not names or any(n not in known for n in names):
            none = " (or 'none')" if allow_none else ""
            raise argparse.ArgumentTypeError(f"{what} must be among {', '.join(known)}{none}, got {text!r}")
        return names

    return parse


def add_models(
    parser: argparse.ArgumentParser, models: Sequence[str], default: Sequence[str], peers: Sequence[str]
) -> None:
    """``--models``: the models to run, space-separated, among ``models``; the help names the recurrent peers."""
    parser.add_argument(
        "--models",
        nargs="+",
        choices=tuple(models),
        default=list(default),
        help=f"models to run (default {' '.join(default)}; peers: {' '.join(peers)}, CPU reference paths)",
    )


def add_threads(parser: argparse.ArgumentParser, default: int, help: str = "torch threads per case") -> None:
    """``--threads``: a case's ``torch.set_num_threads`` (and OMP/MKL threads in its own process)."""
    parser.add_argument("--threads", type=positive_int, default=default, help=f"{help} (default {default})")


def add_model_minutes(parser: argparse.ArgumentParser) -> None:
    """``--model-minutes``: a model still training after this long becomes an error row
    (:func:`retnet_benchmarks.measure.check_model_minutes`)."""
    parser.add_argument(
        "--model-minutes",
        type=float,
        default=0.0,
        help="a model still training after this long gets an error row instead (0: no limit)",
    )


def add_device(parser: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda``, resolved by :func:`retnet_benchmarks.measure.pick_device`."""
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def add_out_dir(parser: argparse.ArgumentParser, flag: str = "--out-dir") -> None:
    """The report directory (``docs/benchmarks`` by default)."""
    parser.add_argument(flag, type=Path, default=DEFAULT_OUT_DIR, help=f"report directory (default {DEFAULT_OUT_DIR})")
