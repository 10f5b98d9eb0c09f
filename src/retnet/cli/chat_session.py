"""A chat that keeps the model's recurrent state between turns, so each turn costs only its new tokens.

Every token of the conversation (user text and replies) is fed to the model exactly once: a turn prefills
the user's tokens chunkwise from the kept state, then samples the reply one recurrent step per token. After
a turn the state equals that of one pass over the whole conversation so far.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from retnet.cli.streaming import TextStream
from retnet.data.tokenizers import Tokenizer


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One token id per row of ``logits`` ``[B, V]``: greedy at temperature 0, else top-k / top-p sampling."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # keep the smallest prefix with mass >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


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
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.max_new_tokens = max_new_tokens
        self.stop = stop
        self.user_prefix, self.user_suffix = user_prefix, user_suffix
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.state = None  # the model's RetNetState after every token so far
        self.history: list[int] = []  # every token fed, in order
        self.tokens_processed_last_turn = 0

    @torch.inference_mode()
    def feed(self, ids: list[int]) -> torch.Tensor:
        """Advance the state over ``ids``; return the logits after the last one ``[1, V]``."""
        x = torch.tensor([ids], dtype=torch.long, device=self.device)
        out = self.model(x, state=self.state, use_cache=True, mode="auto")
        self.state = out.state
        self.history.extend(ids)
        self.tokens_processed_last_turn += len(ids)
        return out.logits[:, -1]

    def turn(self, user_text: str) -> Iterator[str]:
        """Feed the user's text, then yield the reply's text as it is generated (up to the stop string)."""
        self.tokens_processed_last_turn = 0
        ids = self.tokenizer.encode(self.user_prefix + user_text + self.user_suffix)
        if not ids:
            return
        logits = self.feed(ids)
        stream = TextStream(self.tokenizer)
        reply = ""
        for _ in range(self.max_new_tokens):
            token = sample_next(
                logits, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, generator=self.generator
            )
            logits = self.feed([int(token[0])])
            piece = stream.push(int(token[0]))
            if not piece:
                continue
            before = len(reply)
            reply += piece
            if self.stop and self.stop in reply:
                cut = reply.index(self.stop)
                if cut > before:
                    yield reply[before:cut]
                return
            yield piece
        tail = stream.flush()
        if tail:
            yield tail

    def reply(self, user_text: str) -> str:
        """The whole reply to one turn."""
        return "".join(self.turn(user_text))
