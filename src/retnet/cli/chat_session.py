"""A chat that keeps the model's recurrent state between turns, so each turn costs only its new tokens.

Every token of the conversation (user text and replies) is fed to the model exactly once: a turn prefills
the user's tokens from the kept state, then decodes the reply one recurrent step per token
(:func:`retnet.generation.stream_generate`). After a turn the state equals that of one pass over the whole
conversation so far.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from retnet.cli.streaming import TextStream
from retnet.data.tokenizers import Tokenizer
from retnet.generation import stream_generate
from retnet.generation.stops import StopMatcher


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
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
        self.max_new_tokens = max_new_tokens
        self.stop = stop
        self.user_prefix, self.user_suffix = user_prefix, user_suffix
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.state = None  # the model's RetNetState after every token so far
        self.history: list[int] = []  # every token fed, in order
        self.tokens_processed_last_turn = 0

    def _ids(self, ids: list[int]) -> torch.Tensor:
        return torch.tensor([ids], dtype=torch.long, device=self.device)

    @torch.no_grad()
    def feed(self, ids: list[int]) -> None:
        """Advance the state over ``ids`` without generating (e.g. a system text)."""
        if ids:
            self.state = self.model(self._ids(ids), state=self.state, use_cache=True).state
            self.history.extend(ids)

    def turn(self, user_text: str) -> Iterator[str]:
        """Feed the user's text, then yield the reply's text as it is generated (up to the stop string).

        Consume the iterator to the end: the state is complete only then.
        """
        ids = self.tokenizer.encode(self.user_prefix + user_text + self.user_suffix)
        if not ids:
            return
        stream = stream_generate(
            self.model,
            self._ids(ids),
            max_new_tokens=self.max_new_tokens,
            generator=self.generator,
            state=self.state,
            vocab_size=self.tokenizer.vocab_size,
            **self.sampling,
        )
        self.history.extend(ids)
        generated = 0
        text = TextStream(self.tokenizer)
        matcher = StopMatcher([self.stop] if self.stop else [])
        last: int | None = None
        for token in stream:
            last = int(token[0])
            self.history.append(last)
            generated += 1
            piece = matcher.push(text.push(last))  # holds back text that may begin the stop string
            if piece:
                yield piece
            if matcher.stopped:
                break
        else:
            last = None  # the stream ran to its end: its state covers every token
            tail = matcher.push(text.flush())
            tail += "" if matcher.stopped else matcher.flush()
            if tail:
                yield tail
        self.state = stream.state
        if last is not None:  # stopped early: the last token is not in the stream's state yet
            with torch.no_grad():
                self.state = self.model(self._ids([last]), state=self.state, use_cache=True, mode="recurrent").state
        self.tokens_processed_last_turn = len(ids) + generated

    def reply(self, user_text: str) -> str:
        """The whole reply to one turn."""
        return "".join(self.turn(user_text))
