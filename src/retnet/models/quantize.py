"""int8 weights for CPU decoding: every ``nn.Linear`` of a model becomes PyTorch's dynamically quantized linear.

Weights are stored as int8 with one scale per output row (per-channel, symmetric), so a decode step, which
reads every weight once, reads a quarter of the float32 bytes; activations are quantized per call (fbgemm's
int8 GEMM). The embedding table stays float32 (a step reads one row of it). Weight-only int8 through
``torch.ops.aten._weight_int8pack_mm`` was measured slower for a one-row input on this CPU build (so was the
``onednn`` quantized engine; ``x86`` runs fbgemm's kernels), which is why the dynamic form on fbgemm is used.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

QUANTIZE_CHOICES = ("none", "int8")


class QuantizeError(ValueError):
    """``quantize`` was asked for something it cannot do (a mode or a device); the message names the flag."""


def check_quantize(mode: str, device: torch.device | str) -> None:
    """Refuse unknown modes and int8 off the CPU (the quantized kernels are CPU-only)."""
    if mode not in QUANTIZE_CHOICES:
        raise QuantizeError(f"--quantize must be one of {', '.join(QUANTIZE_CHOICES)}, got {mode!r}")
    if mode == "int8" and torch.device(device).type != "cpu":
        raise QuantizeError(
            f"--quantize int8 runs on the CPU only (PyTorch's int8 linear kernels), got --device "
            f"{torch.device(device).type}; use --quantize none there"
        )


def quantize_int8(model: nn.Module) -> nn.Module:
    """``model`` (in place, in eval mode) with every ``nn.Linear`` replaced by a per-channel int8 linear.

    Inference only: the quantized layers have no gradients. Tied output/embedding weights are untied (the
    embedding keeps its float32 table). Raises :class:`QuantizeError` for a model that is not on the CPU
    or not float32.
    """
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    check_quantize("int8", device)
    dtypes = {p.dtype for p in params}
    if dtypes - {torch.float32}:
        raise QuantizeError(f"--quantize int8 needs a float32 model, got {sorted(map(str, dtypes))}")
    from torch.ao.quantization import quantize_dynamic
    from torch.ao.quantization.qconfig import per_channel_dynamic_qconfig

    model.eval()
    with warnings.catch_warnings():  # torch.ao's deprecation notice: the API is still PyTorch's own int8 path
        warnings.simplefilter("ignore")
        quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    return model


def quantized_weight_bytes(model: nn.Module) -> int:
    """Bytes of the int8 linear layers' weights and scales (not counted by ``model.parameters()``)."""
    total = 0
    for module in model.modules():
        if type(module).__module__.startswith("torch.ao.nn.quantized.dynamic") and hasattr(module, "weight"):
            w = module.weight()
            total += w.numel() * w.element_size() + w.q_per_channel_scales().numel() * 4
    return total


def _dynamic_int8(module: nn.Module) -> bool:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return type(module) is DynamicLinear and module._packed_params.dtype == torch.qint8


def fuse_int8_linears(modules: list[nn.Module]) -> nn.Module | None:
    """One int8 linear whose output is the concatenation of ``modules``' outputs (same input), or ``None`` when
    they are not all bias-free per-channel int8 linears of one input width.

    The fused weight holds the same int8 values and per-row scales, and the input is quantized once for all
    rows, as it is for each module alone, so the outputs are the same; a one-row step then makes one int8 product
    instead of several small ones (fewer calls, fewer activation quantizations)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    if len(modules) < 2 or not all(_dynamic_int8(m) for m in modules):
        return None
    weights, biases = zip(*(m._weight_bias() for m in modules), strict=True)
    if any(b is not None for b in biases) or any(w.qscheme() != torch.per_channel_affine for w in weights):
        return None
    if len({w.shape[1] for w in weights}) != 1:
        return None
    fused_weight = torch._make_per_channel_quantized_tensor(
        torch.cat([w.int_repr() for w in weights]),
        torch.cat([w.q_per_channel_scales() for w in weights]),
        torch.cat([w.q_per_channel_zero_points() for w in weights]),
        0,
    )
    fused = DynamicLinear(weights[0].shape[1], fused_weight.shape[0], bias_=False, dtype=torch.qint8)
    fused.set_weight_bias(fused_weight, None)
    return fused
