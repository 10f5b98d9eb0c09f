"""Recurrent form: ``S_n = gamma_n S_{n-1} + k_n^T v_n``, ``o_n = q_n S_n``. O(1) time and memory per step."""

from __future__ import annotations

import torch


def recurrent_retention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    B, T, H, Dk = q.shape
    Dv = v.shape[-1]
    state = initial_state
    if state is None:
        state = q.new_zeros(B, H, Dk, Dv)
    decay = torch.exp(g)  # [H] or [B, T, H]
    decays = [decay] * T if decay.dim() == 1 else decay.unbind(1)
    outputs = []
    # unbind, not q[:, t]: the backward of T index ops would build T full-size gradients (O(T^2) work).
    for a, q_t, k_t, v_t in zip(decays, q.unbind(1), k.unbind(1), v.unbind(1)):
        state = a[..., None, None] * state + k_t[..., :, None] * v_t[..., None, :]
        outputs.append(torch.einsum("bhk,bhkv->bhv", q_t, state))
    return torch.stack(outputs, dim=1), (state if output_final_state else None)
