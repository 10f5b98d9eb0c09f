"""Fused Triton kernels for retention (chunkwise forward/backward, recurrent decoding).

:func:`retnet.ops.retention` calls them for ``backend="triton"``, which ``backend="auto"`` picks for supported
CUDA inputs (:func:`retnet.ops.dispatch.choose`). They also run on CPU tensors under ``TRITON_INTERPRET=1``
(how CI tests them). Triton is imported on first use of one of them, so ``import retnet.ops`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "chunk_retention": "retnet.ops.kernels.chunk",
    "fused_recurrent_retention": "retnet.ops.kernels.recurrent",
    "fused_recurrent_step": "retnet.ops.kernels.recurrent",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
