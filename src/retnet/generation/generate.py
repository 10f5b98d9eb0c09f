"""Autoregressive generation: one chunkwise/parallel prefill, then one O(1) recurrent step per token.

The returned state covers the prompt and every generated token, so a conversation continues from it by
processing only its new tokens (``retnet chat``, the server).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from retnet.generation.sampling import sample_next


class TokenStream:
    """Iterates over generated tokens (``[B]`` long tensors, one per step); ``.state`` is the state after.

    After the stream is exhausted, ``state`` covers the prompt and all yielded tokens (a consumer that stops
    early gets a state without the last yielded token). ``vocab_size`` restricts sampling to the ids below it
    (a tokenizer with fewer tokens than the model's padded embedding rows).
    """

    def __init__(
        self,
        model,
        input_ids: torch.Tensor,
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        attention_mask: torch.Tensor | None = None,
        state=None,
        eos_token_id: int | None = None,
        prefill_mode: str = "auto",
        vocab_size: int | None = None,
    ) -> None:
        if input_ids.dim() != 2 or input_ids.shape[1] < 1:
            raise ValueError(f"input_ids must have shape [B, T] with T >= 1, got {tuple(input_ids.shape)}")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        self.model, self.input_ids, self.attention_mask = model, input_ids, attention_mask
        self.max_new_tokens, self.eos_token_id, self.prefill_mode = max_new_tokens, eos_token_id, prefill_mode
        self.vocab_size = vocab_size
        self.sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        self.state = state
        self.num_prefill_tokens = 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        with torch.no_grad():  # not inference_mode: the returned state must stay usable with autograd on
            out = self.model(
                self.input_ids,
                attention_mask=self.attention_mask,
                state=self.state,
                use_cache=True,
                mode=self.prefill_mode,
                logits_to_keep=1,  # only the last position is sampled from; YOCO skips its cross-decoder
            )
            self.num_prefill_tokens = self.input_ids.numel()
            self.state = out.state
            logits = out.logits[:, -1]
            finished = torch.zeros(self.input_ids.shape[0], dtype=torch.bool, device=self.input_ids.device)
            for _ in range(self.max_new_tokens):
                token = sample_next(logits[:, : self.vocab_size], **self.sampling)
                if self.eos_token_id is not None:
                    token = token.masked_fill(finished, self.eos_token_id)
                    finished |= token == self.eos_token_id
                yield token  # before the step, so a streaming client sees the token at once
                out = self.model(token[:, None], state=self.state, use_cache=True, mode="recurrent")
                self.state, logits = out.state, out.logits[:, -1]
                if finished.all():
                    break


def stream_generate(model, input_ids: torch.Tensor, **kwargs) -> TokenStream:
    """Generated tokens one step at a time; see :class:`TokenStream` for the arguments."""
    return TokenStream(model, input_ids, **kwargs)


def generate(model, input_ids: torch.Tensor, *, max_new_tokens: int, **kwargs):
    """Generate up to ``max_new_tokens`` tokens. Returns ``(sequences [B, T + n], state)``."""
    stream = TokenStream(model, input_ids, max_new_tokens=max_new_tokens, **kwargs)
    tokens = list(stream)
    new = torch.stack(tokens, dim=1) if tokens else input_ids.new_zeros(input_ids.shape[0], 0)
    return torch.cat([input_ids, new], dim=1), stream.state
