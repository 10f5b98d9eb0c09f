import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import retnet
from retnet.training import checkpoint as ckpt
from retnet.training.errors import TrainError
from retnet.training.schedule import warmup_cosine

SRC = os.path.dirname(os.path.dirname(retnet.__file__))


def _parts(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Linear(8, 8)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = warmup_cosine(opt, warmup_steps=1, total_steps=10)
    model(torch.randn(2, 8)).sum().backward()
    opt.step()
    sched.step()
    return model, opt, sched


def _save(run_dir, step: int, seed: int, keep: int = 2):
    model, opt, sched = _parts(seed)
    m, o = ckpt.gather_state(model, opt)
    return ckpt.save_checkpoint(
        run_dir,
        step=step,
        model_state=m,
        optimizer_state=o,
        scheduler=sched,
        scaler=None,
        data_position={"epoch": 0, "cursor": step},
        model_config={"hidden_size": 8},
        train_config={},
        keep=keep,
    )


def test_round_trip_restores_everything(tmp_path):
    _save(tmp_path, 3, seed=1)
    payload = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))
    model, opt, sched = _parts(seed=2)
    ckpt.restore(payload, model, opt, sched, None)
    ref_model, ref_opt, ref_sched = _parts(seed=1)
    assert torch.equal(model.weight, ref_model.weight)
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], ref_opt.state_dict()["state"][0]["exp_avg"])
    assert sched.state_dict() == ref_sched.state_dict()
    assert payload["data"] == {"epoch": 0, "cursor": 3}
    assert torch.equal(torch.get_rng_state(), payload["rng"]["torch"])


def test_keeps_newest_and_ignores_temp_files(tmp_path):
    for step in (1, 2, 3):
        _save(tmp_path, step, seed=step, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2, 3]
    (tmp_path / "checkpoints" / ".ckpt-00000009.pt.abc.tmp").write_bytes(b"partial")
    assert ckpt.latest_checkpoint(tmp_path).name == "ckpt-00000003.pt"


def test_failure_mid_write_leaves_previous_checkpoint(tmp_path, monkeypatch):
    _save(tmp_path, 1, seed=1)
    before = ckpt.latest_checkpoint(tmp_path).read_bytes()

    def broken_save(obj, path):
        with open(path, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path, 2, seed=2)
    monkeypatch.undo()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [1]
    assert ckpt.latest_checkpoint(tmp_path).read_bytes() == before
    assert list((tmp_path / "checkpoints").glob("*.tmp")) == []
    ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))


@pytest.mark.slow  # a subprocess importing torch: ~25 s on a busy 2-core machine
def test_kill_during_save_leaves_previous_checkpoint_loadable(tmp_path):
    """A process killed (SIGKILL) in the middle of writing a checkpoint leaves the previous one intact."""
    _save(tmp_path, 1, seed=1)
    before = ckpt.latest_checkpoint(tmp_path).read_bytes()
    script = textwrap.dedent(
        f"""
        import time, torch
        from retnet.training.checkpoint import save_checkpoint
        from retnet.training.schedule import warmup_cosine
        model = torch.nn.Linear(8, 8)
        opt = torch.optim.AdamW(model.parameters())
        sched = warmup_cosine(opt, warmup_steps=1, total_steps=10)
        def slow_save(obj, path):
            with open(path, "wb") as fh:
                fh.write(b"x" * 1000)
                fh.flush()
                print("writing", flush=True)
                time.sleep(60)
        torch.save = slow_save
        save_checkpoint({str(tmp_path)!r}, step=2, model_state=model.state_dict(), optimizer_state=opt.state_dict(),
                        scheduler=sched, scaler=None, data_position={{}}, model_config={{}}, train_config={{}})
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "writing"
        assert list((tmp_path / "checkpoints").glob(".ckpt-00000002.pt.*.tmp"))  # caught mid-write
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [1]
    assert ckpt.latest_checkpoint(tmp_path).read_bytes() == before
    payload = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))
    assert payload["step"] == 1
    _save(tmp_path, 2, seed=2)  # the next save cleans up the dead one's temp file
    assert list((tmp_path / "checkpoints").glob("*.tmp")) == []


def test_bad_files_and_other_models_are_named(tmp_path):
    bad = tmp_path / "ckpt-00000001.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(TrainError, match="ckpt-00000001.pt.*cannot be read"):
        ckpt.load_checkpoint(bad)
    torch.save({"hello": torch.zeros(1)}, bad)
    with pytest.raises(TrainError, match="not a retnet training checkpoint"):
        ckpt.load_checkpoint(bad)
    with pytest.raises(TrainError, match="does not exist"):
        ckpt.load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(TrainError, match="another model: hidden_size is 8 there, 16 here"):
        ckpt.check_same_model({"model_config": {"hidden_size": 8}}, {"hidden_size": 16}, bad)
