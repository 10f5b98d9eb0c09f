"""Retention math: pure functions on tensors, no ``nn.Module``.

Layout everywhere: ``q, k: [B, T, H, Dk]``, ``v: [B, T, H, Dv]``, state ``[B, H, Dk, Dv]``.
"""

from retnet.ops.decay import decay_weight_sum, gated_log_decay, official_log_decay, paper_log_decay
from retnet.ops.retention import pick_mode, retention

__all__ = ["retention", "pick_mode", "official_log_decay", "paper_log_decay", "gated_log_decay", "decay_weight_sum"]
