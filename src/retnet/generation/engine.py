"""The one decoding engine: ``retnet generate``, ``retnet chat``, ``retnet serve`` and the library run on it.

Each iteration prefills a bounded number of prompt tokens (``prefill_chunk``, oldest request first, chunk by
chunk, so a long prompt never stalls the decoding rows and a 128K-token prompt needs no more memory than one
chunk), then takes one batched recurrent step over every decoding row. Rows live in fixed state slots
(:class:`retnet.generation.slots.StateSlots`), so joining and leaving the batch is one row copy. Sampling,
end-of-sequence ids, stop strings and incremental detokenisation happen here, once, per token.

A failure belongs to one sequence: a prefill that raises, a row whose logits are not finite, a sampler or
detokeniser error fail that sequence alone (it gets an ``error`` event; the others go on). A batched decode
step that raises is retried row by row, so only the rows that fail alone are dropped.

Two drivers share this core: :meth:`Engine.start` runs it on a background thread that serves
:meth:`Engine.submit` (the server; events go to per-request callbacks that never block, and torch releases
the GIL in its kernels), and :meth:`Engine.run` drives it synchronously, yielding events (CLI, library).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from retnet.generation.requests import (
    SHUTTING_DOWN,
    EngineOverloaded,
    Finished,
    Sequence,
    engine_failure,
)
from retnet.generation.sampling import NonFiniteLogitsError, invalid_rows, sample_next
from retnet.generation.slots import StateSlots
from retnet.generation.stops import StopMatcher
from retnet.models.decode_step import DecodeStepFn
from retnet.models.state import RetNetState

log = logging.getLogger("retnet.generation")

PROGRESS_EVERY = 8  # a prompt of more chunks than this logs its prefill progress every that many chunks


def eager_decode_step(model) -> DecodeStepFn:
    """``(ids [n, 1], state) -> (logits [n, V], state)``: one recurrent step of ``model``, eager PyTorch."""

    def step(ids: torch.Tensor, state: RetNetState) -> tuple[torch.Tensor, RetNetState]:
        out = model(ids, state=state, use_cache=True, mode="recurrent")
        return out.logits[:, -1], out.state

    return step


class _Active:
    """Runtime bookkeeping of a sequence: its state during prefill, sampler, detokeniser and stop matcher."""

    def __init__(self, seq: Sequence, tokenizer, device: torch.device) -> None:
        self.seq = seq
        self.state, seq.initial_state = seq.initial_state, None  # the engine owns it now
        self.logits, seq.initial_logits = seq.initial_logits, None
        if self.logits is not None:
            self.logits = self.logits.reshape(1, -1)
        self.snapshots = list(seq.snapshot_at)
        self.chunks = 0
        p = seq.params
        self.generator = seq.generator
        if self.generator is None and seq.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(seq.seed)
        if p.eos_token_ids is not None:
            eos = frozenset(p.eos_token_ids)
        else:
            eos = tokenizer.eos_token_ids if tokenizer is not None else frozenset()
        self.eos_ids = frozenset() if p.ignore_eos else eos  # the ids that end this reply
        stops = list(p.stop) + ([p.end_of_turn] if p.end_of_turn else [])
        if stops and tokenizer is None:
            raise ValueError("stop strings need an engine with a tokenizer")
        self.matcher = StopMatcher(stops)
        self.detok = tokenizer.detokenizer(skip_ids=eos) if tokenizer is not None else None


class Engine:
    """Decodes many sequences together; see the module docstring.

    ``tokenizer`` (a :class:`retnet.data.tokenizers.Tokenizer`, or ``None`` for token ids only) turns tokens
    into text and names the end-of-sequence ids. ``vocab_size`` restricts sampling to the ids below it
    (default: the tokenizer's). ``decode_step`` is the one function every decode step goes through: by default
    the model's own forward (:func:`eager_decode_step`, the reference, which any wrapper module satisfies);
    ``retnet generate``, ``chat`` and ``serve`` pass the lean step of :func:`retnet.models.decode_step.
    make_decode_step` (``--compile`` compiles it). It must not change the state it is given: a batched step
    that raises is retried row by row from that state.
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        *,
        max_batch: int = 64,
        max_queue: int = 256,
        prefill_chunk: int = 256,
        threads: int | None = None,
        vocab_size: int | None = None,
        prefill_mode: str = "auto",
        decode_step: DecodeStepFn | None = None,
    ) -> None:
        for name, value in (("max_batch", max_batch), ("max_queue", max_queue), ("prefill_chunk", prefill_chunk)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.max_queue, self.prefill_chunk, self.threads = max_batch, max_queue, prefill_chunk, threads
        self.vocab_size = vocab_size if vocab_size is not None else getattr(tokenizer, "vocab_size", None)
        self.prefill_mode = prefill_mode
        self.decode_step = decode_step or eager_decode_step(model)
        self.device = torch.device(getattr(model, "device", None) or next(model.parameters()).device)
        self.inbox: queue.Queue[Sequence] = queue.Queue()
        self.prefilling: list[_Active] = []
        self.rows: list[_Active] = []  # decoding sequences, in slot order
        self.next_tokens: list[int] = []  # each row's sampled token, fed at the next step
        self.slots = StateSlots(max_batch)
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
        """Run the engine on a background thread (the server's driver)."""
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

    # ---------------------------------------------------------------- synchronous driver
    def run(self, seqs: Iterable[Sequence]) -> Iterator[tuple[Sequence, tuple[str, Any]]]:
        """Process ``seqs`` on the calling thread, yielding ``(sequence, event)`` as events happen.

        Each sequence's own ``emit`` is called too. A sequence cancelled meanwhile gets no more events;
        closing the iterator early cancels the sequences still running."""
        if self.alive():
            raise RuntimeError("the engine's thread is running: submit() to it instead of run()")
        events: deque[tuple[Sequence, tuple[str, Any]]] = deque()
        seqs = list(seqs)
        for seq in seqs:
            seq.emit = _Recorder(events, seq, seq.emit)
            self.inbox.put(seq)
        running = {id(s) for s in seqs}
        try:
            while running:
                self.iterate()
                while events:
                    seq, event = events.popleft()
                    if event[0] in ("done", "error"):
                        running.discard(id(seq))
                    yield seq, event
                running -= {id(s) for s in seqs if s.cancelled}
                if running and not (self.prefilling or self.rows or self.inbox.qsize()):
                    raise RuntimeError("the engine has nothing left to do but some sequences never ended")
        finally:
            for seq in seqs:
                if id(seq) in running:
                    seq.cancel()
                elif isinstance(seq.emit, _Recorder):
                    seq.emit = seq.emit.inner
            self._drop_cancelled()

    def prefill(self, ids: list[int], state: RetNetState | None = None) -> tuple[torch.Tensor, RetNetState]:
        """Advance a one-row ``state`` over ``ids`` chunk by chunk; returns the last ``[V]`` logits and state."""
        if not ids:
            raise ValueError("prefill needs at least one token")
        logits = None
        with torch.no_grad():
            for start in range(0, len(ids), self.prefill_chunk):
                end = min(start + self.prefill_chunk, len(ids))
                logits, state = self._prefill(torch.tensor([ids[start:end]], device=self.device), state)
                self._log_progress(start // self.prefill_chunk + 1, end, len(ids))
        return logits[0], state

    def fold(self, states: list[RetNetState], tokens: list[int]) -> RetNetState:
        """One decode step folding ``tokens[i]`` into ``states[i]``: the stacked state covering them all."""
        ids = torch.tensor(tokens, device=self.device)[:, None]
        with torch.no_grad():
            return self._step(ids, states[0] if len(states) == 1 else RetNetState.cat(states))[1]

    # ---------------------------------------------------------------- the core (one thread at a time)
    def _step(self, ids: torch.Tensor, state: RetNetState) -> tuple[torch.Tensor, RetNetState]:
        """Every decode step goes through here: ``ids [n, 1]``, state of ``n`` rows -> ``logits [n, V]``, state."""
        return self.decode_step(ids, state)

    def _prefill(self, ids: torch.Tensor, state: RetNetState | None) -> tuple[torch.Tensor, RetNetState]:
        """One prompt chunk ``ids [1, T]``: the last position's ``[1, V]`` logits and the state after it."""
        out = self.model(ids, state=state, use_cache=True, mode=self.prefill_mode, logits_to_keep=1)
        return out.logits[:, -1], out.state

    def _run(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        with torch.no_grad():
            while not self.stopping:
                self._admit()
                if not self.prefilling and not self.rows:
                    self.wake.wait(0.5)
                    self.wake.clear()
                    continue
                self.iterate()
        for act in self.prefilling + self.rows:
            act.seq.emit(("error", SHUTTING_DOWN))
        self.prefilling, self.rows, self.next_tokens = [], [], []
        self.slots.clear()
        while not self.inbox.empty():
            self.inbox.get_nowait().emit(("error", SHUTTING_DOWN))

    def iterate(self) -> None:
        """One engine iteration on the calling thread: admit waiting requests, drop cancelled ones, prefill up
        to ``prefill_chunk`` prompt tokens, take one decode step (what both drivers repeat)."""
        try:
            with torch.no_grad():
                self._admit()
                self._drop_cancelled()
                self._prefill_step()
                self._decode_step()
        except Exception as exc:  # a bug outside any one sequence: fail those in flight, keep going
            self.last_error = traceback.format_exc()
            log.error("engine step failed:\n%s", self.last_error)
            self.stats["errors"] += 1
            for act in self.prefilling + self.rows:
                act.seq.emit(("error", engine_failure(exc)))
            self.prefilling, self.rows, self.next_tokens = [], [], []
            self.slots.clear()

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
            if seq.cancelled:
                continue
            self.stats["requests"] += 1
            try:
                self.prefilling.append(_Active(seq, self.tokenizer, self.device))
            except Exception as exc:
                self.stats["failed_requests"] += 1
                seq.emit(("error", engine_failure(exc)))

    def _drop_cancelled(self) -> None:
        self.prefilling = [a for a in self.prefilling if not a.seq.cancelled]
        for i in reversed(range(len(self.rows))):
            if self.rows[i].seq.cancelled:
                self._remove_row(i)

    def _remove_row(self, i: int) -> None:
        """Row ``i`` leaves; the last row takes its slot (as in :meth:`StateSlots.remove`)."""
        self.slots.remove(i)
        self.rows[i], self.next_tokens[i] = self.rows[-1], self.next_tokens[-1]
        self.rows.pop()
        self.next_tokens.pop()

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
        """Prefill the next chunk of ``act`` (ending at the next snapshot position, if sooner); once its prompt
        is done, sample its first token and move it to the decode rows (``act`` leaves ``prefilling`` only when
        everything succeeded). Returns the tokens used."""
        seq = act.seq
        total, start = len(seq.prompt_ids), seq.prefilled
        used = 0
        if start < total:
            end = min(start + budget, total, *act.snapshots[:1])
            ids = torch.tensor([seq.prompt_ids[start:end]], device=self.device)
            act.logits, act.state = self._prefill(ids, act.state)
            seq.prefilled, used = end, end - start
            self.stats["tokens_prefilled"] += used
            act.chunks += 1
            self._log_progress(act.chunks, end, total)
            if act.snapshots and act.snapshots[0] == end:
                act.snapshots.pop(0)
                seq.emit(("snapshot", (end, act.state.clone(), act.logits[0].clone())))
            if end < total:
                return used
        if seq.keep_prompt_state:
            seq.prompt_state = (act.state.clone(), act.logits.detach().clone())
        if seq.params.max_tokens == 0:
            self.prefilling.pop(0)
            self._finish(act, "length", False, act.state, [], act.logits[0])
            return used
        token = self._sample(act, act.logits)
        if not self._after_token(act, token, lambda: act.state, act.logits[0]):
            self.slots.append(act.state)
            self.rows.append(act)
            self.next_tokens.append(token)
        self.prefilling.pop(0)
        act.state = act.logits = None
        return used

    def _log_progress(self, chunks: int, done: int, total: int) -> None:
        """INFO every ``PROGRESS_EVERY`` chunks of a prompt longer than that many chunks."""
        if total > PROGRESS_EVERY * self.prefill_chunk and chunks % PROGRESS_EVERY == 0:
            log.info("prefill: %d of %d prompt tokens (%.0f%%)", done, total, 100 * done / total)

    def _decode_step(self) -> None:
        if not self.rows:
            return
        ids = torch.tensor(self.next_tokens, device=self.device)[:, None]
        try:
            logits, state = self._step(ids, self.slots.view())
            self.slots.store(state)
        except Exception:
            logits = self._decode_rows_alone(ids)
            if logits is None:
                return
        self.stats["steps"] += 1
        sampled = logits[:, : self.vocab_size] if self.vocab_size else logits
        bad = invalid_rows(sampled).tolist()
        greedy = sampled.argmax(-1).tolist()  # one call for every greedy row
        ended = []
        for i, act in enumerate(self.rows):
            try:
                if bad[i]:
                    raise NonFiniteLogitsError([i])
                token = greedy[i] if act.seq.params.temperature == 0 else self._sample(act, logits[i : i + 1])
                self.next_tokens[i] = token
                if self._after_token(act, token, lambda i=i: self.slots.row(i), logits[i]):
                    ended.append(i)
            except Exception as exc:
                self._fail(act, exc)
                ended.append(i)
        for i in reversed(ended):  # highest first: the last row moved into a freed slot is never one that left
            self._remove_row(i)

    def _decode_rows_alone(self, ids: torch.Tensor) -> torch.Tensor | None:
        """After a batched step raised: step each row alone, fail the rows that raise, keep the others (in
        order). Returns the survivors' logits, or None if none is left."""
        log.warning("batched decode step failed; retrying its %d rows one by one", len(self.rows))
        keep, states, logits = [], [], []
        for i, act in enumerate(self.rows):
            try:
                row_logits, state = self._step(ids[i : i + 1], self.slots.row(i))
            except Exception as exc:
                self._fail(act, exc)
                continue
            keep.append(i)
            states.append(state)
            logits.append(row_logits)
        self.rows = [self.rows[i] for i in keep]
        self.next_tokens = [self.next_tokens[i] for i in keep]
        self.slots.clear()
        for state in states:
            self.slots.append(state)
        return torch.cat(logits) if logits else None

    def _sample(self, act: _Active, logits: torch.Tensor) -> int:
        p = act.seq.params
        if self.vocab_size:
            logits = logits[:, : self.vocab_size]
        token = sample_next(logits, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p, generator=act.generator)
        return int(token[0])

    def _after_token(self, act: _Active, token: int, state: Callable[[], RetNetState], logits: torch.Tensor) -> bool:
        """Emit the token (and its text); if the sequence is done, emit ``done`` and return True. ``state()``
        gives the state before ``token`` (asked for only at the end); ``logits`` are what it was sampled from."""
        seq, eot = act.seq, act.seq.params.end_of_turn
        if seq.first_token_at is None:
            seq.first_token_at = time.perf_counter()
            seq.emit(("first", None))
        seq.generated.append(token)
        self.stats["tokens_generated"] += 1
        if seq.token_events:
            seq.emit(("token", token))
        matcher = act.matcher
        if token in act.eos_ids:
            text, stopped, ended_turn = "", True, True
        else:
            text = matcher.push(act.detok.push(token)) if act.detok is not None else ""
            stopped = matcher.stopped
            ended_turn = stopped and matcher.matched == eot
        at_limit = len(seq.generated) >= seq.params.max_tokens
        if (at_limit or ended_turn) and not matcher.stopped and act.detok is not None:  # release held-back text
            text += matcher.push(act.detok.flush())
            if matcher.stopped:
                stopped, ended_turn = True, ended_turn or matcher.matched == eot
            else:
                text += matcher.flush()
        if text:
            seq.emit(("text", text))
        if not (stopped or at_limit):
            return False
        self._finish(act, "stop" if stopped else "length", ended_turn, state(), [token], logits)
        return True

    def _finish(
        self, act: _Active, reason: str, ended_turn: bool, state: RetNetState, pending: list[int], logits
    ) -> None:
        seq, now = act.seq, time.perf_counter()
        fin = Finished(
            finish_reason=reason,
            ended_turn=ended_turn,
            prompt_tokens=len(seq.prompt_ids),
            completion_tokens=len(seq.generated),
            state=state,
            pending=pending,
            ttft_s=(seq.first_token_at or now) - seq.submitted,
            total_s=now - seq.submitted,
            token_ids=list(seq.generated),
            last_logits=None if logits is None else logits.detach().clone(),
            prompt_state=seq.prompt_state,
        )
        seq.emit(("done", fin))


class _Recorder:
    """A sequence's ``emit`` under :meth:`Engine.run`: queue the event for the caller, then pass it on."""

    def __init__(self, events: deque, seq: Sequence, inner: Callable[[tuple[str, Any]], None]) -> None:
        self.events, self.seq, self.inner = events, seq, inner

    def __call__(self, event: tuple[str, Any]) -> None:
        self.events.append((self.seq, event))
        self.inner(event)
