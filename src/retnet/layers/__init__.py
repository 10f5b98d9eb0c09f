"""Neural-network modules built on :mod:`retnet.ops`: retention layers, norms, rotation, FFN."""

from retnet.layers.attention import CausalSelfAttention, CrossAttention, KVCache, SharedKV
from retnet.layers.encoder import BidirectionalRetention, Retention2D
from retnet.layers.ffn import GatedFFN
from retnet.layers.norm import HeadNorm, RMSNorm
from retnet.layers.retention import GatedRetention, MultiScaleRetention
from retnet.layers.rotary import RetNetRotary, apply_rotary, retnet_angles, rotate_every_two

__all__ = [
    "CausalSelfAttention",
    "CrossAttention",
    "KVCache",
    "SharedKV",
    "BidirectionalRetention",
    "Retention2D",
    "GatedFFN",
    "HeadNorm",
    "RMSNorm",
    "MultiScaleRetention",
    "GatedRetention",
    "RetNetRotary",
    "apply_rotary",
    "retnet_angles",
    "rotate_every_two",
]
