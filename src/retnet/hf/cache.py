"""``RetNetCache``: the recurrent state as a ``transformers`` ``Cache``, so ``generate`` decodes in O(1) per token.

It wraps a :class:`~retnet.models.RetNetState` (one ``[B, H, Dk, Dv]`` matrix per layer and the rotation
offsets) and counts the input columns it has seen (padding included: that is what ``generate`` compares with
``input_ids.shape[1]`` when it resumes from a cache). Its size never grows with the number of tokens. Beam
search reorders it with :meth:`RetNetState.select`. A recurrent state cannot be rolled back, so ``crop`` of a
non-zero number of tokens raises.
"""

from __future__ import annotations

import inspect
from dataclasses import fields
from typing import Any

import torch
from transformers.cache_utils import Cache

from retnet.models.state import RetNetState


class RetNetCache(Cache):
    """The whole recurrent state of a RetNet (``state``) and the number of input columns processed."""

    is_compileable = False  # a plain attribute: generate must not build 4D masks or compile for it

    def __init__(self, state: RetNetState | None = None, seen_tokens: int = 0) -> None:
        super().__init__(layers=[])
        self.state = state
        self.seen_tokens = int(seen_tokens)

    def __repr__(self) -> str:
        rows = self.state.batch_size if self.state is not None else 0
        return f"RetNetCache(rows={rows}, seen_tokens={self.seen_tokens}, nbytes={self.nbytes()})"

    def __len__(self) -> int:
        return len(self.state.layers) if self.state is not None else 0

    # ------------------------------------------------------------------ used by the model
    def set_state(self, state: RetNetState, num_tokens: int) -> None:
        """Replace the state by the one after ``num_tokens`` more input columns."""
        self.state = state
        self.seen_tokens += int(num_tokens)

    def nbytes(self) -> int:
        """Bytes held by the cache: constant however many tokens were generated."""
        return self.state.nbytes() if self.state is not None else 0

    # ------------------------------------------------------------------ the Cache interface generate uses
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1  # no limit: the state has no sequence dimension

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return query_length, 0  # retention needs no attention mask over the past

    @property
    def batch_size(self) -> int:
        return self.state.batch_size if self.state is not None else -1

    @property
    def is_initialized(self) -> bool:
        return self.state is not None

    @property
    def is_croppable(self) -> bool:
        return False

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Keep rows ``beam_idx`` (beam search)."""
        if self.state is not None:
            self.state = self.state.select(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.reorder_cache(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.state is not None:
            index = torch.arange(self.state.batch_size, device=self.state.offset.device).repeat_interleave(repeats)
            self.state = self.state.select(index)

    def reset(self) -> None:
        self.state = None
        self.seen_tokens = 0

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove != 0:
            raise ValueError("RetNetCache cannot be cropped: a recurrent state cannot forget tokens")

    def activate_past_recording(self) -> None:
        raise ValueError("RetNetCache cannot record past states (assisted decoding is not supported)")


def cache_field(output_class: type) -> str:
    """The field of a ``transformers`` output class that holds the cache: ``cache`` in newer releases,
    ``past_key_values`` before."""
    return "cache" if "cache" in {f.name for f in fields(output_class)} else "past_key_values"


def output_cache(output: Any) -> Cache | None:
    """The cache of a ``transformers`` model output, under whichever field its class declares."""
    return getattr(output, cache_field(type(output)))


def cache_argument(model: torch.nn.Module) -> str:
    """The keyword under which ``model.forward`` takes its cache (``cache``, or ``past_key_values`` before)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
