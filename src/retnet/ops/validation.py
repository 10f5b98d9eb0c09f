"""Argument checks for :func:`retnet.ops.retention`: every error names the argument and what was expected.

Shapes, dtypes and devices are always checked. Values (``log_decay <= 0``, mask in {0, 1}) are checked for
CPU tensors, or on request: on an accelerator reading a value back waits for the device, once per call.
"""

from __future__ import annotations

import torch

from retnet.ops.dispatch import BACKENDS, MODES


def _check_float(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    return t


def validate_retention_args(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    mode: str,
    chunk_size: int,
    scale: float | None,
    initial_state: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    backend: str = "auto",
    check_values: bool | None = None,
) -> None:
    """Raise ``TypeError``/``ValueError`` describing the first bad argument, else return ``None``.

    ``check_values``: ``None`` checks values only for CPU tensors; ``True`` always; ``False`` never.
    """
    for name, t in (("q", q), ("k", k), ("v", v), ("log_decay", log_decay)):
        _check_float(name, t)
    if q.dim() != 4:
        raise ValueError(f"q must have shape [B, T, H, Dk], got {tuple(q.shape)}")
    B, T, H, Dk = q.shape
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q [B, T, H, Dk] = {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must have shape [B, T, H, Dv] = [{B}, {T}, {H}, Dv], got {tuple(v.shape)}")
    if T < 1:
        raise ValueError("q must have at least one time step (T >= 1)")
    if log_decay.shape not in ((H,), (B, T, H)):
        raise ValueError(
            f"log_decay must have shape [H] = [{H}] (fixed decay) or [B, T, H] = [{B}, {T}, {H}] "
            f"(gated decay), got {tuple(log_decay.shape)}"
        )
    devices = {t.device for t in (q, k, v, log_decay)}
    for name, t in (("initial_state", initial_state), ("attention_mask", attention_mask)):
        if t is not None:
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
            devices.add(t.device)
    if len(devices) > 1:
        raise ValueError(f"q, k, v, log_decay, initial_state and attention_mask must share one device, got {devices}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    if scale is not None and not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    if initial_state is not None:
        _check_float("initial_state", initial_state)
        Dv = v.shape[-1]
        if initial_state.shape != (B, H, Dk, Dv):
            raise ValueError(
                f"initial_state must have shape [B, H, Dk, Dv] = [{B}, {H}, {Dk}, {Dv}], "
                f"got {tuple(initial_state.shape)}"
            )
    if attention_mask is not None and attention_mask.shape != (B, T):
        raise ValueError(f"attention_mask must have shape [B, T] = [{B}, {T}], got {tuple(attention_mask.shape)}")
    if check_values is None:
        check_values = q.device.type == "cpu"
    if check_values and not torch.jit.is_tracing():
        _check_values(log_decay, attention_mask)


def _check_values(log_decay: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
    """The checks that read tensor values (a host-device synchronisation each off the CPU)."""
    if attention_mask is not None and not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
    if log_decay.numel() and bool((log_decay.detach() > 0).any()):
        raise ValueError("log_decay must be <= 0 (a decay gamma in (0, 1]); got a positive value")
