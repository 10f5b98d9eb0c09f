"""The same training under 2 gloo processes on the CPU (DDP, and FSDP2 with --fsdp) matches one process
with the same global batch (2 processes x 2 sequences vs 1 process x 2 sequences x 2 accumulation steps).

Workers are forked (Linux), which saves re-importing torch in each of them."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from retnet.training.metrics import read_metrics
from retnet.training.trainer import train

from .helpers import small_corpus, tiny_config

STEPS = 6
BPE = {"tokenizer": "bpe", "vocab_size": 300}  # trained by rank 0 and broadcast


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str, corpus: str, fsdp: bool) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    import torch.distributed as dist

    from retnet.training.trainer import train as run

    torch.set_num_threads(1)
    try:
        run(tiny_config(out, corpus, steps=STEPS, batch_size=2, grad_accum=1, fsdp=fsdp, **BPE), quiet=True)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _losses(run_dir) -> list[float]:
    return [float(r["loss"]) for r in read_metrics(run_dir / "metrics.csv")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    corpus = small_corpus(root / "data")
    result = train(tiny_config(root / "single", corpus, steps=STEPS, batch_size=2, grad_accum=2, **BPE), quiet=True)
    return root, corpus, result


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp2"])
def test_two_gloo_processes_match_one_process(reference, fsdp):
    root, corpus, single = reference
    out = root / ("fsdp" if fsdp else "ddp")
    mp.start_processes(_worker, args=(2, _free_port(), str(out), str(corpus), fsdp), nprocs=2, start_method="fork")
    losses = _losses(out)
    assert len(losses) == STEPS
    assert losses == pytest.approx(single.losses, abs=1e-4)
    assert losses[-1] < losses[0]  # it trained
    from safetensors.torch import load_file

    a = load_file(root / "single" / "model.safetensors")
    b = load_file(out / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
