"""Which backend and form a retention call runs: :func:`retnet.ops.dispatch.choose`, decided from plain inputs."""

from __future__ import annotations

import pytest
import torch

from retnet.ops import BackendUnavailableError, retention
from retnet.ops.dispatch import PARALLEL_MAX_LEN, RECURRENT_KERNEL_MAX_LEN, choose, kernel_supports


def _choose(mode="auto", backend="auto", **kw):
    args = dict(
        device_type="cuda",
        seq_len=100,
        chunk_size=64,
        needs_grad=False,
        kernel_ok=True,
        triton_available=True,
        interpret=False,
    )
    return choose(mode, backend, **{**args, **kw})


def test_cuda_with_triton_reaches_the_kernels():
    assert _choose("recurrent", seq_len=1) == ("triton", "recurrent")  # decoding
    assert _choose("recurrent", seq_len=100) == ("triton", "recurrent")
    assert _choose("chunkwise") == ("triton", "chunkwise")
    assert _choose("parallel", needs_grad=True) == ("triton", "chunkwise")  # the chunk kernel, same result
    assert _choose("auto", seq_len=RECURRENT_KERNEL_MAX_LEN) == ("triton", "recurrent")
    assert _choose("auto", seq_len=RECURRENT_KERNEL_MAX_LEN + 1) == ("triton", "chunkwise")
    assert _choose("auto", seq_len=1, needs_grad=True) == ("triton", "chunkwise")


@pytest.mark.parametrize("mode", ["auto", "parallel", "chunkwise", "recurrent"])
def test_cpu_runs_torch_even_under_the_interpreter(mode):
    backend, form = _choose(mode, device_type="cpu", interpret=True)
    assert backend == "torch"
    assert form == (mode if mode != "auto" else "parallel")


@pytest.mark.parametrize(
    "kw",
    [
        dict(kernel_ok=False),
        dict(triton_available=False),
        dict(kernels_off=True),
        dict(device_type="mps"),
    ],
)
def test_auto_falls_back_to_torch(kw):
    assert _choose("chunkwise", **kw) == ("torch", "chunkwise")


def test_recurrent_with_gradients_stays_on_torch_under_auto_and_is_refused_by_triton():
    assert _choose("recurrent", needs_grad=True) == ("torch", "recurrent")
    with pytest.raises(BackendUnavailableError, match="forward-only"):
        _choose("recurrent", "triton", needs_grad=True)


def test_torch_backend_is_forced_and_auto_mode_picks_by_length():
    assert _choose("chunkwise", "torch") == ("torch", "chunkwise")
    assert _choose("auto", "torch", seq_len=1) == ("torch", "recurrent")
    assert _choose("auto", "torch", seq_len=PARALLEL_MAX_LEN) == ("torch", "parallel")
    assert _choose("auto", "torch", seq_len=PARALLEL_MAX_LEN + 1) == ("torch", "chunkwise")
    assert _choose("auto", "torch", seq_len=PARALLEL_MAX_LEN + 1, chunk_size=512) == ("torch", "parallel")


def test_triton_backend_off_cuda_needs_the_interpreter():
    with pytest.raises(BackendUnavailableError, match="backend='triton' needs CUDA tensors"):
        _choose("chunkwise", "triton", device_type="cpu")
    assert _choose("chunkwise", "triton", device_type="cpu", interpret=True) == ("triton", "chunkwise")
    with pytest.raises(BackendUnavailableError, match="triton package"):
        _choose("chunkwise", "triton", triton_available=False)
    with pytest.raises(ValueError, match="backend must be one of"):
        _choose("chunkwise", "cuda")


def test_retention_refuses_triton_on_cpu_without_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q = torch.randn(1, 3, 2, 4)
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
        retention(q, q, q, torch.full((2,), -0.1), backend="triton")
    o, _ = retention(q, q, q, torch.full((2,), -0.1), backend="torch")
    assert o.shape == q.shape


def test_kernel_supports_dtypes_and_head_sizes():
    x = torch.zeros(1, 4, 2, 8)
    assert kernel_supports(x, x, x, None)
    assert kernel_supports(x.half(), x.half(), x.half(), torch.zeros(1, 2, 8, 8))
    assert not kernel_supports(x.double(), x.double(), x.double(), None)
    assert not kernel_supports(x, x, x, torch.zeros(1, 2, 8, 8, dtype=torch.float64))
    assert not kernel_supports(x, x.half(), x, None)
    wide = torch.zeros(1, 4, 2, 260)
    assert not kernel_supports(wide, wide, x, None)
