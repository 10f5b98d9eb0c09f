"""Text generation with RetNet: chunkwise prefill, then O(1)-per-token recurrent decoding."""

from retnet.generation.generate import TokenStream, generate, stream_generate
from retnet.generation.sampling import filter_logits, sample_next

__all__ = ["TokenStream", "generate", "stream_generate", "filter_logits", "sample_next"]
