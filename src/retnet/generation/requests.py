"""What a request to the engine is and what it gets back: parameters, the sequence, its events and endings."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from retnet.generation.sampling import NonFiniteLogitsError, check_sampling
from retnet.models.state import RetNetState


class EngineOverloaded(RuntimeError):
    """Too many requests waiting to start."""


@dataclass
class Failure:
    """Why a sequence ended without a reply: an HTTP status, a message and a machine-readable code."""

    status: int
    message: str
    code: str
    error: BaseException | None = field(default=None, compare=False, repr=False)  # the cause, if an exception

    def __str__(self) -> str:
        return self.message


SHUTTING_DOWN = Failure(503, "the server is shutting down", "server_shutting_down")
NON_FINITE = Failure(500, "the model produced non-finite logits (NaN or inf) for this request", "non_finite_logits")


def engine_failure(exc: BaseException) -> Failure:
    """The :class:`Failure` a request gets for an exception raised while the engine processed it."""
    if isinstance(exc, NonFiniteLogitsError):
        return Failure(NON_FINITE.status, NON_FINITE.message, NON_FINITE.code, exc)
    message = f"the engine failed while processing this request ({type(exc).__name__})"
    return Failure(500, message, "engine_error", exc)


@dataclass
class SamplingParams:
    """How one request samples and when it ends. ``eos_token_ids`` (``None``: the tokenizer's) end the reply,
    unless ``ignore_eos``: then the reply runs to ``max_tokens`` or a stop string (fixed-length benchmarks)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    end_of_turn: str | None = None  # a stop string that means the model closed its turn itself
    eos_token_ids: frozenset[int] | None = None
    ignore_eos: bool = False


@dataclass
class Finished:
    """The end of one request: why it stopped, counts, and what a conversation needs to continue."""

    finish_reason: str  # "stop" or "length"
    ended_turn: bool  # the model generated end_of_turn or an end-of-sequence token
    prompt_tokens: int
    completion_tokens: int
    state: RetNetState  # covers everything but ``pending``
    pending: list[int]  # sampled tokens not yet folded into ``state``
    ttft_s: float
    total_s: float
    token_ids: list[int] = field(default_factory=list)  # every sampled token of this reply
    last_logits: torch.Tensor | None = None  # [V]: the logits ``pending[0]`` was sampled from (end of ``state``)
    # with ``keep_prompt_state``: the state after the prompt and its last ``[1, V]`` logits, from which the same
    # prompt can be answered again without a forward pass
    prompt_state: tuple[RetNetState, torch.Tensor] | None = None


class Sequence:
    """One request inside the engine. ``emit`` receives ``("first", None)`` when the first token is sampled,
    then ``("text", str)`` pieces, then ``("done", Finished)`` (or ``("error", Failure)`` at any point); it is
    called from the engine's thread and must not block. Exactly one ``done`` or ``error`` ends every sequence
    that is not cancelled.

    Optional events: ``("token", id)`` before each token's text when ``token_events``; and, for each position
    ``p`` in ``snapshot_at`` (``0 < p <= len(prompt_ids)``), ``("snapshot", (p, state, last_logits))``: the
    state after the first ``p`` prompt tokens (a copy the receiver owns) and the ``[V]`` logits at ``p - 1``.
    A request may start from ``state`` with its ``logits`` and no prompt (e.g. a cached prefix): the first
    token is then sampled from ``logits`` without any prefill. ``generator`` overrides ``params.seed``.
    ``keep_prompt_state`` asks for the state after the prompt and its last logits in ``Finished.prompt_state``.
    """

    def __init__(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        emit: Callable[[tuple[str, Any]], None] | None = None,
        state: RetNetState | None = None,
        *,
        logits: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        snapshot_at: Iterable[int] = (),
        token_events: bool = False,
        keep_prompt_state: bool = False,
    ) -> None:
        if not prompt_ids and (logits is None or state is None):
            raise ValueError("a request needs at least one token to process (or a state with its logits)")
        if params.max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {params.max_tokens}")
        check_sampling(params.temperature, params.top_k, params.top_p)
        snaps = sorted(set(int(p) for p in snapshot_at))
        if snaps and not 0 < snaps[0] <= snaps[-1] <= len(prompt_ids):
            raise ValueError(f"snapshot_at positions must be in 1..{len(prompt_ids)} (the prompt), got {snaps}")
        self.prompt_ids, self.params, self.initial_state = list(prompt_ids), params, state
        self.emit: Callable[[tuple[str, Any]], None] = emit or _discard
        self.initial_logits = logits
        self.snapshot_at, self.token_events = snaps, token_events
        self.keep_prompt_state = keep_prompt_state
        self.prompt_state: tuple[RetNetState, torch.Tensor] | None = None
        self.cancelled = False
        self.generator = generator
        self.seed = params.seed
        self.prefilled = 0
        self.generated: list[int] = []
        self.submitted = time.perf_counter()
        self.first_token_at: float | None = None

    def cancel(self) -> None:
        """Called from any thread; the engine drops the sequence at its next step without emitting more.

        Also drops the callback and the initial state: the callback usually closes over the request that holds
        this sequence, a reference cycle that would otherwise keep a state per finished request alive until
        Python's cyclic collector happens to run (RSS grew without bound under load before this)."""
        self.cancelled = True
        self.emit = _discard
        self.initial_state = self.initial_logits = self.prompt_state = None


def _discard(event: tuple[str, Any]) -> None:
    """The callback of a cancelled sequence."""
