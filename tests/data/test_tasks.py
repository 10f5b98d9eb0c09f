"""The embedded classification tasks: genre split by play, digits split stratified, both deterministic."""

from __future__ import annotations

import pytest
import torch

from retnet.data.tasks import GENRES, digits_task, genre_split, genre_task, load_task


def test_genre_split_is_disjoint_by_play_and_covers_every_genre():
    split = genre_split()
    for genre in GENRES:
        train, test = set(split["train"][genre]), set(split["test"][genre])
        assert train and test and not train & test
    test = genre_task("test", passage_bytes=128, max_per_play=5)
    train = genre_task("train", passage_bytes=128, max_per_play=5)
    assert not set(test.groups) & set(train.groups)
    assert set(test.labels.tolist()) == set(range(len(GENRES)))
    assert test.inputs.shape[1] == 128 and test.inputs.dtype == torch.long and int(test.inputs.max()) < 256
    again = genre_task("test", passage_bytes=128, max_per_play=5)
    assert torch.equal(again.inputs, test.inputs)


def test_digits_split_is_stratified_and_deterministic():
    train, test = digits_task("train"), digits_task("test")
    assert len(train.labels) + len(test.labels) == 1797
    assert train.inputs.shape[1:] == (1, 8, 8) and float(train.inputs.max()) <= 1.0
    assert torch.bincount(test.labels).min() >= 30
    assert torch.equal(digits_task("test").inputs, test.inputs)


def test_unknown_task_or_split():
    with pytest.raises(ValueError, match="unknown task 'cifar'"):
        load_task("cifar", "train")
    with pytest.raises(ValueError, match="split must be"):
        digits_task("validation")
