"""Which implementation runs a retention call, decided in one function: :func:`choose`.

Two independent choices:

- ``mode``, the math form: ``"parallel"``, ``"chunkwise"``, ``"recurrent"`` or ``"auto"``. All three forms
  give the same outputs and final state (docs/retention.md); they differ in cost.
- ``backend``, the code that computes it: ``"torch"`` (the PyTorch forms in :mod:`retnet.ops`, every device
  and dtype, the reference), ``"triton"`` (the fused kernels in :mod:`retnet.ops.kernels`), or ``"auto"``:
  Triton for CUDA tensors the kernels support when Triton is installed, else torch.

The Triton backend has two kernels: the chunk kernel (forward and backward) computes the parallel and the
chunkwise forms, the recurrent kernel (forward only) the recurrent form. On the CPU the kernels run only on
request (``backend="triton"``) under Triton's interpreter (``TRITON_INTERPRET=1`` before importing retnet),
which is how the kernel tests run. ``RETNET_DISABLE_KERNELS=1`` makes ``"auto"`` always pick torch.

Kept free of Triton imports so that ``import retnet.ops`` stays cheap.
"""

from __future__ import annotations

import importlib.util
import os
from functools import cache

import torch

MODES = ("auto", "parallel", "chunkwise", "recurrent")
BACKENDS = ("auto", "torch", "triton")

# mode="auto" on the torch backend: parallel up to this length (or one chunk), chunkwise beyond. Where the
# quadratic form stops being faster on the CPU: docs/benchmarks/retention.md, "Where mode=auto should switch".
PARALLEL_MAX_LEN = 192

# mode="auto" on the Triton backend: prompts up to this length without gradients run through the recurrent
# kernel (one launch, no chunk padding); longer ones, and anything that needs gradients, the chunk kernel.
RECURRENT_KERNEL_MAX_LEN = 16

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
KERNEL_MAX_HEAD_DIM = 256


class BackendUnavailableError(ValueError):
    """``backend="triton"`` was requested where the kernels cannot run."""


@cache
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton kernels run through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def kernels_disabled() -> bool:
    return os.environ.get("RETNET_DISABLE_KERNELS", "0") == "1"


def kernel_supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, initial_state: torch.Tensor | None) -> bool:
    """Whether the kernels handle these inputs: one dtype among float32/16, bfloat16; heads <= 256 wide."""
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in KERNEL_DTYPES:
        return False
    if initial_state is not None and initial_state.dtype == torch.float64:
        return False
    T, H, D = q.shape[1], q.shape[2], max(q.shape[-1], v.shape[-1])
    return D <= KERNEL_MAX_HEAD_DIM and fits_int32_offsets(T, H, D)


def fits_int32_offsets(T: int, H: int, D: int) -> bool:
    """Per-sequence element offsets (``t * H * D``) are 32-bit inside the kernels."""
    return T * H * D < 2**31


def pick_mode(T: int, device: torch.device | None = None, chunk_size: int = 64) -> str:
    """The form ``mode="auto"`` uses on the torch backend: recurrent for one step, parallel up to
    ``max(PARALLEL_MAX_LEN, chunk_size)`` steps, chunkwise beyond (``device`` is accepted and unused)."""
    del device
    if T == 1:
        return "recurrent"
    if T <= max(PARALLEL_MAX_LEN, chunk_size):
        return "parallel"
    return "chunkwise"


def choose(
    mode: str,
    backend: str,
    *,
    device_type: str,
    seq_len: int,
    chunk_size: int,
    needs_grad: bool,
    kernel_ok: bool,
    triton_available: bool,
    interpret: bool,
    kernels_off: bool = False,
) -> tuple[str, str]:
    """``(backend, form)`` for one call: ``"torch"`` or ``"triton"``, and the form that backend computes.

    ``kernel_ok`` is :func:`kernel_supports` of the inputs; ``needs_grad`` whether autograd will differentiate
    the call. Raises :class:`BackendUnavailableError` for ``backend="triton"`` where the kernels cannot run.
    """
    if backend == "auto":
        use_triton = (
            device_type == "cuda"
            and triton_available
            and not kernels_off
            and kernel_ok
            and not (mode == "recurrent" and needs_grad)  # the recurrent kernel is forward-only
        )
        backend = "triton" if use_triton else "torch"
    elif backend == "triton":
        if not triton_available:
            raise BackendUnavailableError("backend='triton' needs the triton package, which is not installed")
        if device_type != "cuda" and not interpret:
            raise BackendUnavailableError(
                f"backend='triton' needs CUDA tensors, got {device_type!r} ones; set TRITON_INTERPRET=1 before "
                "importing retnet to run the kernels through Triton's CPU interpreter, or use backend='torch'"
            )
        if mode == "recurrent" and needs_grad:
            raise BackendUnavailableError(
                "backend='triton' with mode='recurrent' is forward-only: call it under torch.no_grad(), "
                "or use mode='chunkwise' for gradients"
            )
    elif backend != "torch":
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")

    if backend == "torch":
        return "torch", (pick_mode(seq_len, None, chunk_size) if mode == "auto" else mode)
    if mode == "auto":
        short = seq_len <= RECURRENT_KERNEL_MAX_LEN and not needs_grad
        return "triton", ("recurrent" if short else "chunkwise")
    # The kernels have no quadratic form: the chunk kernel computes the parallel form's result.
    return "triton", ("chunkwise" if mode == "parallel" else mode)
