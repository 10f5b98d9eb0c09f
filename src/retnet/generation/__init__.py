"""Text generation with RetNet: one engine (chunked prefill, batched O(1)-per-token recurrent decoding in fixed
state slots) under ``generate``/``stream_generate``, ``retnet chat`` and ``retnet serve``."""

from retnet.generation.engine import Engine, eager_decode_step
from retnet.generation.generate import TokenStream, generate, stream_generate
from retnet.generation.requests import (
    SHUTTING_DOWN,
    EngineOverloaded,
    Failure,
    Finished,
    SamplingParams,
    Sequence,
)
from retnet.generation.sampling import filter_logits, sample_next

__all__ = [
    "Engine",
    "EngineOverloaded",
    "Failure",
    "Finished",
    "SHUTTING_DOWN",
    "SamplingParams",
    "Sequence",
    "TokenStream",
    "eager_decode_step",
    "filter_logits",
    "generate",
    "sample_next",
    "stream_generate",
]
