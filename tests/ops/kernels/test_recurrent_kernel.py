"""The fused recurrent kernel (Triton interpreter): prompts, in-place decoding steps, and the dispatch to it."""

from __future__ import annotations

import pytest
import torch

from retnet.ops import retention
from retnet.ops.kernels import chunk_retention, fused_recurrent_retention, fused_recurrent_step
from tests.ops.helpers import rel_err
from tests.ops.kernels.helpers import kernel_inputs


def _ref(q, k, v, g, s0, mask, scale=0.5):
    return retention(
        q.double(), k.double(), v.double(), g.double(), mode="recurrent", scale=scale,
        initial_state=None if s0 is None else s0.double(), output_final_state=True, attention_mask=mask,
    )  # fmt: skip


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("pad", [None, [2, 0]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_prompt_matches_reference(gated, pad, dtype):
    q, k, v, g, s0, mask = kernel_inputs(2, 7, 2, 8, 20, gated=gated, state=True, pad=pad, dtype=dtype)
    o, s = fused_recurrent_retention(
        q, k, v, g, scale=0.5, initial_state=s0, output_final_state=True, attention_mask=mask
    )
    o_ref, s_ref = _ref(q, k, v, g, s0, mask)
    tol = 1e-5 if dtype == torch.float32 else 5e-3
    assert o.dtype == dtype and s.dtype == torch.float32
    assert rel_err(o, o_ref) < tol and rel_err(s, s_ref) < tol


def test_decoding_in_place_continues_a_chunked_prefill():
    q, k, v, g, _, mask = kernel_inputs(2, 23, 2, 16, 12, gated=True, pad=[3, 0])
    o_all, s_all = _ref(q, k, v, g, None, mask)
    P = 19
    o_pre, state = chunk_retention(
        q[:, :P], k[:, :P], v[:, :P], g[:, :P], scale=0.5, output_final_state=True, attention_mask=mask[:, :P]
    )
    outs = [o_pre]
    for t in range(P, 23):
        sl = slice(t, t + 1)
        o_t, same = fused_recurrent_step(q[:, sl], k[:, sl], v[:, sl], g[:, sl], state, scale=0.5)
        assert same is state
        outs.append(o_t)
    assert rel_err(torch.cat(outs, 1), o_all) < 1e-5
    assert rel_err(state, s_all) < 1e-5


def test_recurrent_kernel_refuses_gradients_and_bad_state():
    q, k, v, g, s0, _ = kernel_inputs(1, 2, 1, 8, 8, state=True)
    with pytest.raises(RuntimeError, match="forward-only"):
        fused_recurrent_retention(q.requires_grad_(), k, v, g)
    with pytest.raises(ValueError, match="state"):
        fused_recurrent_step(q.detach(), k, v, g, s0.double())


def test_retention_reaches_the_kernels_through_the_dispatch(monkeypatch):
    q, k, v, g, s0, mask = kernel_inputs(1, 20, 2, 8, 8, state=True, pad=[2])
    kw = dict(initial_state=s0, output_final_state=True, attention_mask=mask)
    calls = []
    for name in ("chunk_retention", "fused_recurrent_retention"):
        real = getattr(__import__("retnet.ops.kernels", fromlist=[name]), name)
        monkeypatch.setattr(
            f"retnet.ops.kernels.{name}", lambda *a, _r=real, _n=name, **k: calls.append(_n) or _r(*a, **k)
        )
    o_ref, s_ref = _ref(q, k, v, g, s0, mask, scale=1.0)
    retention(q, k, v, g, **kw)  # CPU tensors: backend="auto" is torch, even under the interpreter
    assert calls == []
    with torch.no_grad():
        for mode in ("recurrent", "auto"):
            o, s = retention(
                q[:, :5], k[:, :5], v[:, :5], g, mode=mode, backend="triton", **{**kw, "attention_mask": mask[:, :5]}
            )
            assert rel_err(o, o_ref[:, :5]) < 1e-5
        o, s = retention(q, k, v, g, mode="recurrent", backend="triton", **kw)
        assert rel_err(o, o_ref) < 1e-5 and rel_err(s, s_ref) < 1e-5
    o, s = retention(q.requires_grad_(), k, v, g, mode="parallel", backend="triton", **kw)
    assert o.requires_grad and rel_err(o, o_ref) < 1e-5 and rel_err(s, s_ref) < 1e-5
    o, s = retention(q[:, :5], k[:, :5], v[:, :5], g, backend="triton", **{**kw, "attention_mask": mask[:, :5]})
    assert calls == ["fused_recurrent_retention"] * 3 + ["chunk_retention"] * 2
