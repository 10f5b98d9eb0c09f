"""Fused Triton kernels for retention (chunkwise forward/backward, recurrent decoding).

Importing this package imports Triton. ``retnet.ops`` installs :func:`retnet.ops.kernels.dispatch.fused_retention`
as the ``mode="auto"`` hook of :func:`retnet.ops.retention` when Triton is installed; the hook only acts on
CUDA tensors. The functions below also run on CPU tensors under ``TRITON_INTERPRET=1`` (how CI tests them).
"""

from retnet.ops.kernels.chunk import chunk_retention
from retnet.ops.kernels.recurrent import fused_recurrent_retention, fused_recurrent_step

__all__ = ["chunk_retention", "fused_recurrent_retention", "fused_recurrent_step"]
