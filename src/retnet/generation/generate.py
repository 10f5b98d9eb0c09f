"""``generate`` / ``stream_generate``: a batch of prompts through the engine, as ``[B]`` token tensors per step.

Each row of the batch is its own request in :class:`retnet.generation.engine.Engine` (a left-padded row's
padding is dropped), so every row gets exactly the tokens it gets alone. The returned state covers the prompt
and every generated token, so a conversation continues from it by processing only its new tokens.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from retnet.generation.engine import Engine
from retnet.generation.requests import Finished, SamplingParams, Sequence
from retnet.models.state import RetNetState

PREFILL_CHUNK = 2048  # prompt tokens per prefill call: long prompts prefill in bounded memory


class TokenStream:
    """Iterates over generated tokens (``[B]`` long tensors, one per step); ``.state`` is the state after.

    Once the stream is exhausted, ``state`` covers each row's prompt and all of its generated tokens (a row that
    produced ``eos_token_id`` stops there; later steps yield ``eos_token_id`` for it). A consumer that stops
    early keeps the state it passed in. ``vocab_size`` restricts sampling to the ids below it (a tokenizer with
    fewer tokens than the model's padded embedding rows). ``generator`` is shared by the rows, in row order.
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
        state: RetNetState | None = None,
        eos_token_id: int | None = None,
        prefill_mode: str = "auto",
        vocab_size: int | None = None,
        prefill_chunk: int = PREFILL_CHUNK,
    ) -> None:
        if input_ids.dim() != 2 or input_ids.shape[1] < 1:
            raise ValueError(f"input_ids must have shape [B, T] with T >= 1, got {tuple(input_ids.shape)}")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                f"got {tuple(attention_mask.shape)}"
            )
        if state is not None and state.batch_size != input_ids.shape[0]:
            raise ValueError(f"state holds {state.batch_size} rows but input_ids has {input_ids.shape[0]}")
        self.input_ids, self.attention_mask, self.state = input_ids, attention_mask, state
        self.eos_token_id = eos_token_id
        self.engine = Engine(
            model,
            max_batch=input_ids.shape[0],
            prefill_chunk=prefill_chunk,
            vocab_size=vocab_size,
            prefill_mode=prefill_mode,
        )
        eos = frozenset() if eos_token_id is None else frozenset({int(eos_token_id)})
        self.params = SamplingParams(
            max_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, eos_token_ids=eos
        )
        self.generator = generator
        self.num_prefill_tokens = 0

    def _sequences(self) -> list[Sequence]:
        rows = self.input_ids.tolist()
        if self.attention_mask is not None:
            masks = self.attention_mask.bool().tolist()
            rows = [[t for t, keep in zip(row, mask) if keep] for row, mask in zip(rows, masks)]
        for i, row in enumerate(rows):
            if not row:
                raise ValueError(f"attention_mask leaves row {i} of input_ids without any token")
        states = [None] * len(rows) if self.state is None else [self.state.select([i]) for i in range(len(rows))]
        self.num_prefill_tokens = sum(len(r) for r in rows)
        return [
            Sequence(row, self.params, state=st, generator=self.generator, token_events=True)
            for row, st in zip(rows, states)
        ]

    def __iter__(self) -> Iterator[torch.Tensor]:
        seqs = self._sequences()
        index = {id(s): i for i, s in enumerate(seqs)}
        tokens: list[list[int]] = [[] for _ in seqs]
        ended: dict[int, Finished] = {}
        fill = self.eos_token_id if self.eos_token_id is not None else 0
        sent = 0
        for seq, (kind, value) in self.engine.run(seqs):
            row = index[id(seq)]
            if kind == "token":
                tokens[row].append(value)
            elif kind == "done":
                ended[row] = value
            elif kind == "error":
                raise value.error if value.error is not None else RuntimeError(value.message)
            # a step is complete once every row has its token for it (or has ended)
            while any(len(t) > sent for t in tokens) and all(len(t) > sent or r in ended for r, t in enumerate(tokens)):
                column = [t[sent] if len(t) > sent else fill for t in tokens]
                yield torch.tensor(column, dtype=torch.long, device=self.input_ids.device)
                sent += 1
        fins = [ended[i] for i in range(len(seqs))]
        if all(f.pending for f in fins):
            self.state = self.engine.fold([f.state for f in fins], [f.pending[0] for f in fins])
        else:
            self.state = fins[0].state if len(fins) == 1 else RetNetState.cat([f.state for f in fins])


def stream_generate(model, input_ids: torch.Tensor, **kwargs) -> TokenStream:
    """Generated tokens one step at a time; see :class:`TokenStream` for the arguments."""
    return TokenStream(model, input_ids, **kwargs)


def generate(model, input_ids: torch.Tensor, *, max_new_tokens: int, **kwargs):
    """Generate up to ``max_new_tokens`` tokens. Returns ``(sequences [B, T + n], state)``."""
    stream = TokenStream(model, input_ids, max_new_tokens=max_new_tokens, **kwargs)
    tokens = list(stream)
    new = torch.stack(tokens, dim=1) if tokens else input_ids.new_zeros(input_ids.shape[0], 0)
    return torch.cat([input_ids, new], dim=1), stream.state
