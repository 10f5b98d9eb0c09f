"""The Transformer baseline: Hugging Face ``LlamaForCausalLM`` (SDPA, its KV cache) matched in size to RetNet.

The baseline is the model a user would otherwise pick, built from ``transformers``, never hand-written.
It gets the RetNet config's hidden size, layer count, vocabulary and embedding tying; the MLP width is
solved so the two parameter totals agree (to within a few hundred parameters).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from retnet.models import RetNetConfig, RetNetForCausalLM

# ~100M parameters: the official key dim of 256 per head (3 heads), d_v = ffn = 1.69 d, a BPE-sized vocabulary.
DECODE_100M = dict(
    vocab_size=8192, hidden_size=768, num_layers=12, num_heads=3, value_dim=1296, ffn_dim=1296, chunk_size=64
)
# ~25M parameters, byte vocabulary: the CPU training/quality size (the ``small`` preset).
TRAIN_25M = dict(vocab_size=256, hidden_size=512, num_layers=8, num_heads=4, value_dim=864, ffn_dim=864)


def llama_num_parameters(
    vocab_size: int, hidden_size: int, num_layers: int, intermediate_size: int, kv_dim: int, tied: bool
) -> int:
    """Parameters of a bias-free ``LlamaForCausalLM`` (q, o: d x d; k, v: d x kv_dim; gated MLP; RMSNorms)."""
    d = hidden_size
    per_layer = 2 * d * d + 2 * d * kv_dim + 3 * d * intermediate_size + 2 * d
    return num_layers * per_layer + d + vocab_size * d * (1 if tied else 2)


def count_parameters_of_config(llama_config: Any) -> int:
    """Parameters of the ``LlamaForCausalLM`` a config describes, without building it."""
    head_dim = llama_config.hidden_size // llama_config.num_attention_heads
    return llama_num_parameters(
        llama_config.vocab_size,
        llama_config.hidden_size,
        llama_config.num_hidden_layers,
        llama_config.intermediate_size,
        llama_config.num_key_value_heads * head_dim,
        llama_config.tie_word_embeddings,
    )


def matched_llama_config(config: RetNetConfig, head_dim: int = 64, max_positions: int = 131072) -> Any:
    """A ``LlamaConfig`` with RetNet's d, layers, vocab and tying, MLP width solved to match parameters.

    Attention is multi-head (no grouped KV), ``head_dim`` 64 where it divides d (the usual Llama shape),
    else RetNet's own head count. SDPA attention, rope base 10000.
    """
    from transformers import LlamaConfig

    d = config.hidden_size
    heads = d // head_dim if d % head_dim == 0 else config.num_heads
    target = config.num_parameters()
    fixed = llama_num_parameters(config.vocab_size, d, config.num_layers, 0, d, config.tie_word_embeddings)
    intermediate = max(1, round((target - fixed) / (3 * d * config.num_layers)))
    cfg = LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=d,
        intermediate_size=intermediate,
        num_hidden_layers=config.num_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        rms_norm_eps=config.norm_eps,
        tie_word_embeddings=config.tie_word_embeddings,
        rope_theta=10000.0,
        attention_bias=False,
        mlp_bias=False,
        use_cache=True,
    )
    cfg._attn_implementation = "sdpa"
    return cfg


def build_llama(config: Any, seed: int = 0) -> nn.Module:
    """``LlamaForCausalLM`` in float32 with SDPA attention, eval mode."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.config._attn_implementation = "sdpa"
    return model.float().eval()


def build_retnet(config: RetNetConfig, seed: int = 0) -> RetNetForCausalLM:
    torch.manual_seed(seed)
    return RetNetForCausalLM(config).float().eval()


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


VARIANTS = ("retnet", "gated", "hybrid", "yoco")


def hybrid_pattern(num_layers: int) -> str:
    """Gated retention with softmax attention every 4th layer ("GGGA" for 4 layers); the last layer is
    attention when there are fewer than 4."""
    kinds = ["A" if i % 4 == 3 else "G" for i in range(num_layers)]
    if "A" not in kinds:
        kinds[-1] = "A"
    return "".join(kinds)


def variant_config(model: str, retnet_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The RetNet kwargs of one variant (``retnet``, ``gated``, ``hybrid``, ``yoco``) at RetNet's size.

    Attention and YOCO's cross-attention layers have fewer weights than a retention layer (no d_v-wide
    value/gate projections), so the variant's FFN width is solved to bring its total back to RetNet's.
    """
    if model not in VARIANTS:
        raise ValueError(f"model must be one of {VARIANTS}, got {model!r}")
    base = dict(retnet_kwargs)
    if model == "retnet":
        return base
    if model == "gated":
        return {**base, "gated": True}
    extra = {"block_types": hybrid_pattern(base["num_layers"])} if model == "hybrid" else {"architecture": "yoco"}
    cfg = {**base, **extra}
    target = RetNetConfig(**base).num_parameters()
    have = RetNetConfig(**cfg).num_parameters()
    per_unit = 3 * base["hidden_size"] * base["num_layers"]  # parameters per unit of FFN width
    cfg["ffn_dim"] = max(1, RetNetConfig(**cfg).ffn_dim + round((target - have) / per_unit))
    return cfg


def build_pair(retnet_kwargs: dict[str, Any], seed: int = 0) -> tuple[RetNetConfig, Any]:
    """The RetNet config and its matched Llama config."""
    rcfg = RetNetConfig(**retnet_kwargs)
    return rcfg, matched_llama_config(rcfg)
