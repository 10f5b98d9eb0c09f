"""The engine: one thread that decodes every active request together.

Each loop iteration prefills a bounded number of prompt tokens (chunkwise, one request at a time, so a long
prompt cannot stall the others), then takes one batched recurrent step over all decoding sequences. A
sequence joins the decode batch by concatenating its state (``RetNetState.cat``) and leaves it by selecting
the remaining rows; rows carry their own offsets, so sequences at different positions decode together.
Results go to per-request callbacks that never block (the HTTP side queues them), so a slow client cannot
stall the loop. Torch releases the GIL in its kernels, so the asyncio server stays responsive.

A failure belongs to one sequence: a prefill that raises, a row whose logits are not finite, a sampler or
detokeniser error fail that sequence alone (it gets an ``error`` event; the others go on). A batched decode
step that raises is retried row by row, so only the rows that fail alone are dropped.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from retnet.generation import sample_next
from retnet.generation.sampling import NonFiniteLogitsError, check_sampling, invalid_rows
from retnet.generation.stops import StopMatcher
from retnet.models import RetNetState
from retnet.serving.tokenizer import IncrementalDetokenizer, ServingTokenizer

log = logging.getLogger("retnet.serving")


class EngineOverloaded(RuntimeError):
    """Too many requests waiting to start."""


@dataclass
class Failure:
    """Why a sequence ended without a reply: an HTTP status, a message and a machine-readable code."""

    status: int
    message: str
    code: str

    def __str__(self) -> str:
        return self.message


SHUTTING_DOWN = Failure(503, "the server is shutting down", "server_shutting_down")
NON_FINITE = Failure(500, "the model produced non-finite logits (NaN or inf) for this request", "non_finite_logits")


def engine_failure(exc: BaseException) -> Failure:
    if isinstance(exc, NonFiniteLogitsError):
        return NON_FINITE
    return Failure(500, f"the engine failed while processing this request ({type(exc).__name__})", "engine_error")


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    end_of_turn: str | None = None  # a stop string that means the model closed its turn itself


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
    # with ``keep_prompt_state``: the state after the prompt and the logits of its last position, from which
    # the same prompt can be answered again without a forward pass
    prompt_state: tuple[RetNetState, torch.Tensor] | None = None


class Sequence:
    """One request inside the engine. ``emit`` receives ``("first", None)`` when the first token is sampled,
    then ``("text", str)`` pieces, then ``("done", Finished)`` (or ``("error", Failure)`` at any point); it is
    called from the engine thread and must not block. Exactly one ``done`` or ``error`` ends every sequence
    that is not cancelled.

    A sequence may start from a state and the logits of its last position (``logits``, shape ``[1, vocab]``)
    with no prompt: it samples at once, with no forward pass. ``keep_prompt_state`` asks for the state after
    the prompt and its last logits in ``Finished.prompt_state``."""

    def __init__(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        emit: Callable[[tuple[str, Any]], None],
        state: RetNetState | None = None,
        *,
        logits: torch.Tensor | None = None,
        keep_prompt_state: bool = False,
    ) -> None:
        if not prompt_ids and (logits is None or state is None):
            raise ValueError("a request needs at least one token to process, or a state and its last logits")
        check_sampling(params.temperature, params.top_k, params.top_p)
        self.prompt_ids, self.params, self.emit, self.initial_state = prompt_ids, params, emit, state
        self.initial_logits, self.keep_prompt_state = logits, keep_prompt_state
        self.prompt_state: tuple[RetNetState, torch.Tensor] | None = None
        self.cancelled = False
        self.generator: torch.Generator | None = None
        if params.seed is not None:
            self.generator = torch.Generator().manual_seed(params.seed)
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


class _Active:
    """Runtime bookkeeping of a sequence: state during prefill, detokeniser and stop matcher."""

    def __init__(self, seq: Sequence, tokenizer: ServingTokenizer) -> None:
        self.seq = seq
        self.state, seq.initial_state = seq.initial_state, None  # the engine owns it now
        self.logits: torch.Tensor | None = seq.initial_logits
        seq.initial_logits = None
        stops = list(seq.params.stop) + ([seq.params.end_of_turn] if seq.params.end_of_turn else [])
        self.matcher = StopMatcher(stops)
        self.detok = IncrementalDetokenizer(tokenizer, skip_ids=tokenizer.eos_token_ids)
        self.eos_ids = tokenizer.eos_token_ids


class Engine:
    def __init__(
        self,
        model,
        tokenizer: ServingTokenizer,
        *,
        max_batch: int = 64,
        max_queue: int = 256,
        prefill_chunk: int = 256,
        threads: int | None = None,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.max_queue, self.prefill_chunk, self.threads = max_batch, max_queue, prefill_chunk, threads
        self.inbox: queue.Queue[Sequence] = queue.Queue()
        self.prefilling: list[_Active] = []
        self.rows: list[_Active] = []  # decode batch, in state row order
        self.batch_state: RetNetState | None = None
        self.next_tokens: list[int] = []
        self.wake = threading.Event()
        self.stopping = False
        self.thread: threading.Thread | None = None
        self.stats = {
            "steps": 0,
            "tokens_generated": 0,
            "tokens_prefilled": 0,
            "requests": 0,
            "errors": 0,
            "failed_requests": 0,
        }
        self.last_error: str | None = None

    # ---------------------------------------------------------------- public, any thread
    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="retnet-engine", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout=10)

    def submit(self, seq: Sequence) -> None:
        if self.inbox.qsize() + len(self.prefilling) >= self.max_queue:
            raise EngineOverloaded(f"{self.max_queue} requests are already waiting; retry later")
        self.inbox.put(seq)
        self.wake.set()

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def load(self) -> dict:
        return {
            "decoding": len(self.rows),
            "prefilling": len(self.prefilling),
            "waiting": self.inbox.qsize(),
            "max_batch": self.max_batch,
            **self.stats,
        }

    # ---------------------------------------------------------------- engine thread
    def _run(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        with torch.no_grad():
            while not self.stopping:
                try:
                    self._admit()
                    if not self.prefilling and not self.rows:
                        self.wake.wait(0.5)
                        self.wake.clear()
                        continue
                    self._drop_cancelled()
                    self._prefill_step()
                    self._decode_step()
                except Exception as exc:  # a bug outside any one sequence: fail those in flight, keep serving
                    self.last_error = traceback.format_exc()
                    log.error("engine step failed:\n%s", self.last_error)
                    self.stats["errors"] += 1
                    for act in self.prefilling + self.rows:
                        act.seq.emit(("error", engine_failure(exc)))
                    self.prefilling, self.rows, self.next_tokens, self.batch_state = [], [], [], None
        for act in self.prefilling + self.rows:
            act.seq.emit(("error", SHUTTING_DOWN))
        while not self.inbox.empty():
            self.inbox.get_nowait().emit(("error", SHUTTING_DOWN))

    def _fail(self, act: _Active, exc: BaseException) -> None:
        """End one sequence with an error; the others are not touched."""
        if not isinstance(exc, NonFiniteLogitsError):
            self.last_error = "".join(traceback.format_exception(exc))
            log.error("request failed in the engine:\n%s", self.last_error)
        self.stats["failed_requests"] += 1
        act.seq.emit(("error", engine_failure(exc)))

    def _admit(self) -> None:
        while len(self.prefilling) + len(self.rows) < self.max_batch:
            try:
                seq = self.inbox.get_nowait()
            except queue.Empty:
                return
            if not seq.cancelled:
                self.stats["requests"] += 1
                self.prefilling.append(_Active(seq, self.tokenizer))

    def _drop_cancelled(self) -> None:
        self.prefilling = [a for a in self.prefilling if not a.seq.cancelled]
        keep = [i for i, a in enumerate(self.rows) if not a.seq.cancelled]
        if len(keep) < len(self.rows):
            self._keep_rows(keep)

    def _keep_rows(self, keep: list[int]) -> None:
        self.rows = [self.rows[i] for i in keep]
        self.next_tokens = [self.next_tokens[i] for i in keep]
        self.batch_state = self.batch_state.select(keep) if keep else None

    def _prefill_step(self) -> None:
        """Up to ``prefill_chunk`` prompt tokens, oldest request first."""
        budget = self.prefill_chunk
        while budget > 0 and self.prefilling:
            act = self.prefilling[0]
            try:
                budget -= self._prefill_one(act, budget)
            except Exception as exc:
                self.prefilling.pop(0)
                act.state = act.logits = None
                self._fail(act, exc)

    def _prefill_one(self, act: _Active, budget: int) -> int:
        """Prefill the next chunk of ``act``; once its prompt is done, sample its first token and move it to the
        decode batch (``act`` leaves ``prefilling`` only when everything succeeded). Returns tokens used."""
        seq = act.seq
        n = min(budget, len(seq.prompt_ids) - seq.prefilled)
        if n:  # (none for a sequence that starts from stored logits)
            ids = torch.tensor([seq.prompt_ids[seq.prefilled : seq.prefilled + n]], device=self.model.device)
            out = self.model(ids, state=act.state, use_cache=True, mode="auto")
            act.state, act.logits = out.state, out.logits[:, -1]
            seq.prefilled += n
            self.stats["tokens_prefilled"] += n
        if seq.prefilled == len(seq.prompt_ids):
            if seq.keep_prompt_state:
                seq.prompt_state = (act.state.clone(), act.logits.clone())
            token = self._sample(act, act.logits)
            if self._after_token(act, token, act.state):
                self.prefilling.pop(0)
            else:
                joined = act.state if self.batch_state is None else RetNetState.cat([self.batch_state, act.state])
                self.prefilling.pop(0)
                self.batch_state = joined
                self.rows.append(act)
                self.next_tokens.append(token)
            act.state = act.logits = None
        return n

    def _decode_step(self) -> None:
        if not self.rows:
            return
        ids = torch.tensor(self.next_tokens, device=self.model.device)[:, None]
        try:
            out = self.model(ids, state=self.batch_state, use_cache=True, mode="recurrent")
            self.batch_state, logits = out.state, out.logits[:, -1]
        except Exception:
            logits = self._decode_rows_alone(ids)
            if logits is None:
                return
        self.stats["steps"] += 1
        bad = invalid_rows(logits).tolist()
        greedy = logits.argmax(-1).tolist()  # one call for every greedy row
        keep = []
        for i, act in enumerate(self.rows):
            try:
                if bad[i]:
                    raise NonFiniteLogitsError([i])
                token = greedy[i] if act.seq.params.temperature == 0 else self._sample(act, logits[i : i + 1])
                self.next_tokens[i] = token
                if not self._after_token(act, token, None, row=i):
                    keep.append(i)
            except Exception as exc:
                self._fail(act, exc)
        if len(keep) < len(self.rows):
            self._keep_rows(keep)

    def _decode_rows_alone(self, ids: torch.Tensor) -> torch.Tensor | None:
        """After a batched step raised: step each row alone, fail the rows that raise, keep the others (the
        state is replaced only where a row succeeded). Returns the survivors' logits, or None if none is left."""
        log.warning("batched decode step failed; retrying its %d rows one by one", len(self.rows))
        keep, states, logits = [], [], []
        for i, act in enumerate(self.rows):
            try:
                out = self.model(ids[i : i + 1], state=self.batch_state.select([i]), use_cache=True, mode="recurrent")
            except Exception as exc:
                self._fail(act, exc)
                continue
            keep.append(i)
            states.append(out.state)
            logits.append(out.logits[:, -1])
        self.rows = [self.rows[i] for i in keep]
        self.next_tokens = [self.next_tokens[i] for i in keep]
        self.batch_state = RetNetState.cat(states) if states else None
        return torch.cat(logits) if logits else None

    def _sample(self, act: _Active, logits: torch.Tensor) -> int:
        p = act.seq.params
        token = sample_next(
            logits, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p, generator=act.seq.generator
        )
        return int(token[0])

    def _after_token(self, act: _Active, token: int, state: RetNetState | None, row: int | None = None) -> bool:
        """Emit the token's text; if the sequence is done, emit ``done`` and return True."""
        seq, eot = act.seq, act.seq.params.end_of_turn
        if seq.first_token_at is None:
            seq.first_token_at = time.perf_counter()
            seq.emit(("first", None))
        seq.generated.append(token)
        self.stats["tokens_generated"] += 1
        if token in act.eos_ids:
            text, stopped, ended_turn = "", True, True
        else:
            text = act.matcher.push(act.detok.push(token))
            stopped = act.matcher.stopped
            ended_turn = stopped and act.matcher.matched == eot
        at_limit = len(seq.generated) >= seq.params.max_tokens
        if (at_limit or ended_turn) and not act.matcher.stopped:  # the end: release held-back text
            text += act.matcher.push(act.detok.flush())
            if act.matcher.stopped:
                stopped, ended_turn = True, ended_turn or act.matcher.matched == eot
            else:
                text += act.matcher.flush()
        if text:
            seq.emit(("text", text))
        if not (stopped or at_limit):
            return False
        done_reason = "stop" if stopped else "length"
        if state is None:
            state = self.batch_state.select([row])
        now = time.perf_counter()
        seq.emit(
            (
                "done",
                Finished(
                    finish_reason=done_reason,
                    ended_turn=ended_turn,
                    prompt_tokens=len(seq.prompt_ids),
                    completion_tokens=len(seq.generated),
                    state=state,
                    pending=[token],
                    ttft_s=seq.first_token_at - seq.submitted,
                    total_s=now - seq.submitted,
                    token_ids=list(seq.generated),
                    prompt_state=seq.prompt_state,
                ),
            )
        )
        return True
