"""Multi-query associative recall (MQAR), generated on the fly.

A sequence lists ``num_pairs`` key-value pairs ``k1 v1 k2 v2 ...`` (distinct keys) and then queries every
key again in a random order, each followed by its value: ``... ka va kb vb``. The model is scored on the
values that follow queried keys, which it can only get right by recalling the pair from the context. A
model with a fixed-size state must squeeze all pairs into it; attention can look them up.

Token ids: 0 is unused (BOS-like), keys ``1 .. key_vocab``, values ``key_vocab+1 .. key_vocab+value_vocab``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MQARTask:
    key_vocab: int = 128
    value_vocab: int = 128

    @property
    def vocab_size(self) -> int:
        return 1 + self.key_vocab + self.value_vocab

    def pairs_for_length(self, seq_len: int) -> int:
        """Pairs filling a sequence: ``4 * pairs`` tokens (context + queries), so ``seq_len // 4``."""
        return seq_len // 4

    def batch(self, batch_size: int, seq_len: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, labels)`` of shape ``[B, seq_len]``; labels are -100 except at the query values.

        ``labels[t]`` is the target for position t (the trainer shifts), so it holds the value token at the
        position of the value that answers a query.
        """
        if seq_len < 8 or seq_len % 4:
            raise ValueError(f"seq_len must be a multiple of 4 and >= 8, got {seq_len}")
        n = self.pairs_for_length(seq_len)
        if n > self.key_vocab:
            raise ValueError(f"seq_len {seq_len} needs {n} distinct keys but key_vocab is {self.key_vocab}")
        keys = torch.rand(batch_size, self.key_vocab, generator=generator).argsort(-1)[:, :n] + 1
        values = torch.randint(0, self.value_vocab, (batch_size, n), generator=generator) + 1 + self.key_vocab
        order = torch.rand(batch_size, n, generator=generator).argsort(-1)
        q_keys, q_values = keys.gather(1, order), values.gather(1, order)
        context = torch.stack([keys, values], -1).flatten(1)
        queries = torch.stack([q_keys, q_values], -1).flatten(1)
        ids = torch.cat([context, queries], 1)
        labels = torch.full_like(ids, -100)
        labels[:, 2 * n + 1 :: 2] = q_values
        return ids, labels


def recall_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """``(correct, total)`` over labelled positions: the prediction at t-1 must equal ``labels[t]``."""
    pred = logits[:, :-1].argmax(-1)
    target = labels[:, 1:]
    scored = target != -100
    return int((pred[scored] == target[scored]).sum()), int(scored.sum())
