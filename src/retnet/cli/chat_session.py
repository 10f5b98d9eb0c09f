"""A chat that keeps the model's recurrent state between turns, so each turn costs only its new tokens.

Every token of the conversation (user text and replies) is fed to the model exactly once: a turn is one
request to :class:`retnet.generation.Engine` whose prompt is the tokens not yet in the state (the last
reply's final token, anything ``feed`` gave, the user's text) and whose initial state is the one kept. The
engine hands back the state and the sampled tokens not yet folded into it; the next turn starts with them.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from retnet.data.tokenizers import Tokenizer
from retnet.generation import Engine, SamplingParams, Sequence
from retnet.generation.generate import PREFILL_CHUNK
from retnet.models import RetNetState
from retnet.models.decode_step import DecodeStepFn


class ChatSession:
    """Turn-by-turn generation over one growing recurrent state."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Tokenizer,
        *,
        temperature: float = 0.8,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        max_new_tokens: int = 200,
        stop: str | None = "\n\n",
        user_prefix: str = "",
        user_suffix: str = "\n\n",
        device: torch.device | str = "cpu",
        decode_step: DecodeStepFn | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.engine = Engine(model, tokenizer, max_batch=1, prefill_chunk=PREFILL_CHUNK, decode_step=decode_step)
        self.params = SamplingParams(
            max_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, stop=[stop] if stop else []
        )
        self.user_prefix, self.user_suffix = user_prefix, user_suffix
        self.generator = torch.Generator(device=torch.device(device)).manual_seed(seed)
        self._state: RetNetState | None = None  # covers every token of ``history`` but ``pending``
        self.pending: list[int] = []  # tokens fed or sampled but not yet folded into the state
        self.history: list[int] = []  # every token of the conversation, in order
        self.tokens_processed_last_turn = 0

    @property
    def state(self) -> RetNetState | None:
        """The state after every token of ``history`` (folds the pending tokens in on the spot; a turn does not
        need this: it feeds them with its own prompt)."""
        if self.pending:
            self._state = self.engine.prefill(self.pending, self._state)[1]
            self.pending = []
        return self._state

    def state_bytes(self) -> int:
        """Bytes held by the kept state (0 before the first turn)."""
        return self._state.nbytes() if self._state is not None else 0

    def feed(self, ids: list[int]) -> None:
        """Add ``ids`` to the conversation without generating (e.g. a system text); processed with the next
        turn's prompt."""
        self.pending.extend(ids)
        self.history.extend(ids)

    def turn(self, user_text: str) -> Iterator[str]:
        """Feed the user's text, then yield the reply's text as it is generated (up to the stop string).

        Consume the iterator to the end: a turn abandoned halfway leaves the session as it was before it."""
        ids = self.tokenizer.encode(self.user_prefix + user_text + self.user_suffix)
        if not ids:
            return
        seq = Sequence(self.pending + ids, self.params, state=self._state, generator=self.generator)
        for _, (kind, value) in self.engine.run([seq]):
            if kind == "text":
                yield value
            elif kind == "error":
                raise value.error if value.error is not None else RuntimeError(value.message)
            elif kind == "done":
                self._state, self.pending = value.state, list(value.pending)
                self.history.extend(ids + value.token_ids)
                self.tokens_processed_last_turn = len(ids) + value.completion_tokens

    def reply(self, user_text: str) -> str:
        """The whole reply to one turn."""
        return "".join(self.turn(user_text))
