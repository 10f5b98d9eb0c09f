"""The metrics log: CSV rows, TensorBoard scalars (through a recording stand-in for ``SummaryWriter``, so the
test runs whether or not tensorboard is installed) and the resume purge."""

from __future__ import annotations

import sys
import types

import pytest

from retnet.training.metrics import METRICS_FILE, MetricsLog, read_metrics


class RecordingWriter:
    instances: list[RecordingWriter] = []

    def __init__(self, log_dir: str, purge_step: int | None = None) -> None:
        self.log_dir, self.purge_step = log_dir, purge_step
        self.scalars: list[tuple[str, float, int]] = []
        self.closed = False
        RecordingWriter.instances.append(self)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def recording_tensorboard(monkeypatch):
    RecordingWriter.instances = []
    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = RecordingWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    return RecordingWriter.instances


def _row(step: int, **extra) -> dict:
    return {"step": step, "tokens": 64 * step, "lr": 1e-3, "loss": 5.0 - step / 10, "tokens_per_s": 100.0, **extra}


def test_scalars_go_to_tensorboard_with_their_step(tmp_path, recording_tensorboard):
    log = MetricsLog(tmp_path, resume_step=None)
    log.log(_row(1))
    log.log(_row(2, val_loss=4.5, val_bpb=6.25))
    log.close()
    (writer,) = recording_tensorboard
    assert writer.log_dir == str(tmp_path / "tensorboard") and writer.purge_step is None and writer.closed
    assert ("loss", 4.9, 1) in writer.scalars and ("val_bpb", 6.25, 2) in writer.scalars
    assert not any(tag.startswith("val") for tag, _, step in writer.scalars if step == 1)  # no eval at step 1
    assert [r["step"] for r in read_metrics(tmp_path / METRICS_FILE)] == ["1", "2"]


def test_resume_purges_later_events_as_it_drops_later_csv_rows(tmp_path, recording_tensorboard):
    log = MetricsLog(tmp_path, resume_step=None)
    for step in range(1, 6):
        log.log(_row(step))
    log.close()
    resumed = MetricsLog(tmp_path, resume_step=3)  # resuming from an older checkpoint, at step 3
    resumed.log(_row(4))
    resumed.close()
    assert recording_tensorboard[-1].purge_step == 4
    assert [r["step"] for r in read_metrics(tmp_path / METRICS_FILE)] == ["1", "2", "3", "4"]


def test_without_tensorboard_only_the_csv_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import raise ImportError
    log = MetricsLog(tmp_path, resume_step=None)
    log.log(_row(1))
    log.close()
    assert not (tmp_path / "tensorboard").exists()
    assert read_metrics(tmp_path / METRICS_FILE)[0]["loss"] == repr(4.9)
