"""Retention math: pure functions on tensors, no ``nn.Module``.

Layout everywhere: ``q, k: [B, T, H, Dk]``, ``v: [B, T, H, Dv]``, state ``[B, H, Dk, Dv]``.
"""

from retnet.ops.bidirectional import bidirectional_retention
from retnet.ops.decay import decay_weight_sum, gated_log_decay, official_log_decay, paper_log_decay
from retnet.ops.retention import pick_mode, retention
from retnet.ops.retention2d import manhattan_log_decay, retention_2d

__all__ = [
    "retention",
    "pick_mode",
    "bidirectional_retention",
    "retention_2d",
    "manhattan_log_decay",
    "official_log_decay",
    "paper_log_decay",
    "gated_log_decay",
    "decay_weight_sum",
]


def _install_fused_kernels() -> None:
    """Hook the Triton kernels into ``retention(mode="auto")`` when Triton is installed (they act on CUDA only)."""
    import importlib
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        return
    from retnet.ops.kernels.dispatch import fused_retention

    importlib.import_module("retnet.ops.retention")._fused_impl = fused_retention


_install_fused_kernels()
