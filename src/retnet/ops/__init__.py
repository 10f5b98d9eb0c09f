"""Retention math: pure functions on tensors, no ``nn.Module``.

Layout everywhere: ``q, k: [B, T, H, Dk]``, ``v: [B, T, H, Dv]``, state ``[B, H, Dk, Dv]``.
"""

from retnet.ops.bidirectional import bidirectional_retention
from retnet.ops.decay import decay_weight_sum, gated_log_decay, official_log_decay, paper_log_decay
from retnet.ops.dispatch import BackendUnavailableError, pick_mode
from retnet.ops.retention import retention, retention_state
from retnet.ops.retention2d import manhattan_log_decay, retention_2d

__all__ = [
    "retention",
    "retention_state",
    "pick_mode",
    "BackendUnavailableError",
    "bidirectional_retention",
    "retention_2d",
    "manhattan_log_decay",
    "official_log_decay",
    "paper_log_decay",
    "gated_log_decay",
    "decay_weight_sum",
]
