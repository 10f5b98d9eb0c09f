"""``POST /v1/completions`` and ``POST /v1/chat/completions``: validation, conversations, JSON and SSE replies."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import secrets
import time
from collections.abc import AsyncIterator

import anyio
import torch
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from retnet.data.tokenizers import Tokenizer
from retnet.generation import SHUTTING_DOWN, Engine, EngineOverloaded, Finished, SamplingParams, Sequence
from retnet.models import RetNetState
from retnet.serving.chat_template import ChatTemplate
from retnet.serving.config import ServerConfig
from retnet.serving.errors import APIError, error_body
from retnet.serving.metrics import Metrics
from retnet.serving.prefix_cache import PrefixCache, text_boundaries
from retnet.serving.protocol import ChatCompletionRequest, CompletionRequest
from retnet.serving.state_io import StateFileError, check_state
from retnet.serving.store import (
    Conversation,
    ConversationBusy,
    ConversationNotFound,
    ConversationStore,
    StoreFull,
    StoreUnavailable,
)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
LIVENESS_S = 5.0  # how often a waiting request checks that the engine thread is still there


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def progress_comment(done: int, total: int) -> str:
    """A server-sent-events comment line with a long prompt's prefill progress: clients that do not look for it
    (the ``openai`` client, browsers' EventSource) skip comments by the SSE standard."""
    return f": prefill {done}/{total}\n\n"


class Turn:
    """One request's life: its conversation (if any), its sequence in the engine, its event queue."""

    def __init__(
        self,
        kind: str,
        conv: Conversation | None,
        created_conv: bool,
        base: Conversation | None = None,
        base_param: str = "conversation_id",
    ) -> None:
        self.kind, self.conv, self.created_conv = kind, conv, created_conv
        # the conversation whose stored state this turn continues: ``conv`` itself, or (a fork) another one that
        # the turn only reads; ``base_param`` names the request field that chose it, for error messages
        self.base = conv if base is None else base
        self.base_param = base_param
        self.carried = 0  # tokens folded into the state the turn starts from (set by ``Generator.start``)
        self.events: asyncio.Queue = asyncio.Queue()
        self.seq: Sequence | None = None
        self.saved = False
        self.closed = False
        self.cached_tokens = 0  # prompt tokens covered by a prefix state (not prefilled)
        self.reported = 0  # prompt tokens prefilled when progress was last reported


class TurnStream(StreamingResponse):
    """A streaming response that closes its turn however the response ends.

    A ``finally`` in the body generator would not do: a client that disconnects before the first chunk
    leaves the generator unstarted, and an unstarted generator runs no ``finally``, so the conversation would
    stay busy. This wrapper closes the turn after the response in every case (shielded from the cancellation
    that a disconnect brings).
    """

    def __init__(self, body, on_close, **kwargs) -> None:
        super().__init__(body, **kwargs)
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.on_close()


class Generator:
    def __init__(
        self,
        config: ServerConfig,
        engine: Engine,
        store: ConversationStore,
        tokenizer: Tokenizer,
        template: ChatTemplate,
        vocab_size: int,
        state_template: RetNetState,
        prefix: PrefixCache | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config, self.engine, self.store, self.tokenizer = config, engine, store, tokenizer
        self.template, self.vocab_size, self.state_template = template, vocab_size, state_template
        self.prefix, self.metrics = prefix, metrics

    # ---------------------------------------------------------------- validation
    def check_model_and_length(self, model: str, max_tokens: int | None, param: str, default_max: int) -> int:
        """Refuse another model's name; the reply's token budget (``default_max`` when unset), within the limit."""
        if model != self.config.model_name:
            raise APIError(404, f"the model '{model}' does not exist", param="model", code="model_not_found")
        limit = self.config.max_tokens_limit
        max_tokens = min(default_max, limit) if max_tokens is None else max_tokens
        if max_tokens > limit:
            raise APIError(
                400, f"{param} is {max_tokens}, above this server's limit of {limit}",
                param=param, code="max_tokens_exceeded",
            )  # fmt: skip
        return max_tokens

    def check_common(self, req: CompletionRequest | ChatCompletionRequest, default_max: int) -> SamplingParams:
        max_tokens = req.max_tokens
        if isinstance(req, ChatCompletionRequest) and req.max_completion_tokens is not None:
            max_tokens = req.max_completion_tokens
        max_tokens = self.check_model_and_length(req.model, max_tokens, "max_tokens", default_max)
        stop = req.stop_list()
        if len(stop) > self.config.max_stop:
            raise APIError(400, f"at most {self.config.max_stop} stop sequences are allowed", param="stop")
        if req.conversation_id is not None and req.store is False:
            raise APIError(400, "'store: false' cannot be combined with a conversation_id", param="store")
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            seed=req.seed,
            stop=stop,
            ignore_eos=req.ignore_eos,
        )

    def encode(self, text: str, param: str) -> list[int]:
        try:
            return self.tokenizer.encode(text)
        except (TypeError, ValueError, UnicodeError) as exc:  # e.g. lone surrogates, which JSON lets through
            raise APIError(400, f"the {param} is not valid Unicode text: {exc}", param=param) from exc

    def check_prompt_length(self, ids: list[int], param: str) -> None:
        if len(ids) > self.config.max_prompt_tokens:
            raise APIError(
                400, f"the {param} has {len(ids)} tokens, above this server's limit of {self.config.max_prompt_tokens}",
                param=param, code="context_length_exceeded",
            )  # fmt: skip

    async def open_turn(self, kind: str, req: CompletionRequest | ChatCompletionRequest) -> Turn:
        if req.conversation_id is not None:
            try:
                conv = await asyncio.to_thread(self.store.acquire, req.conversation_id)
            except ConversationNotFound as exc:
                raise APIError(404, str(exc), param="conversation_id", code="conversation_not_found") from exc
            except ConversationBusy as exc:
                raise APIError(409, str(exc), param="conversation_id", code="conversation_busy") from exc
            if conv.kind != kind:
                self.store.release(conv.id)
                raise APIError(
                    400, f"conversation {conv.id!r} is a {conv.kind} conversation; use the matching endpoint",
                    param="conversation_id", code="conversation_kind_mismatch",
                )  # fmt: skip
            return Turn(kind, conv, created_conv=False)
        if req.store:
            try:
                conv = await asyncio.to_thread(self.store.create, kind, acquire=True)
            except StoreFull as exc:
                raise APIError(429, str(exc), param="store", code="store_full") from exc
            return Turn(kind, conv, created_conv=True)
        return Turn(kind, None, created_conv=False)

    async def close_turn(self, turn: Turn) -> None:
        """Release everything the turn holds (idempotent): the engine sequence, the conversation's lock, and a
        conversation created for this turn that never got its first state."""
        if turn.closed:
            return
        turn.closed = True
        if turn.seq is not None:
            turn.seq.cancel()  # also breaks the turn <-> sequence reference cycle
            turn.seq = None
        if turn.conv is not None:
            self.store.release(turn.conv.id)
            if turn.created_conv and not turn.saved:
                with contextlib.suppress(ConversationNotFound, ConversationBusy):
                    await asyncio.to_thread(self.store.delete, turn.conv.id)

    def starts_fresh(self, turn: Turn) -> bool:
        """Whether the turn starts from no state (so a prefix state may cover its first tokens)."""
        return self.prefix is not None and (turn.base is None or turn.base.state_file is None)

    async def start(
        self,
        turn: Turn,
        new_ids: list[int],
        params: SamplingParams,
        boundaries: list[int] | None = None,
        *,
        initial: tuple[RetNetState, torch.Tensor, int] | None = None,
        keep_prompt_state: bool = False,
    ) -> None:
        """Load the conversation state (or the longest prefix state of a fresh prompt) and hand the sequence to
        the engine; ``boundaries`` are positions in ``new_ids`` worth keeping a prefix state at. ``initial``
        (a state, its last logits and the number of tokens it holds) starts from there instead, without a
        forward pass."""
        if initial is not None:
            state, logits, turn.carried = initial
            await self._submit(turn, new_ids, params, state, logits, keep_prompt_state)
            return
        state, pending, base = None, [], turn.base
        if base is not None and base.state_file is not None:
            try:
                state = await asyncio.to_thread(self.store.load, base)
                check_state(state, self.state_template)
            except (OSError, StateFileError, ValueError) as exc:
                raise APIError(
                    404, f"conversation {base.id!r} has an unreadable state ({exc}); delete it and start anew",
                    param=turn.base_param, code="conversation_state_unreadable",
                ) from exc  # fmt: skip
            pending = base.pending
            turn.carried = base.tokens - len(base.pending)
        prompt = pending + new_ids
        if not prompt:
            raise APIError(400, "the prompt is empty", param="prompt", code="empty_prompt")
        await self._submit(turn, prompt, params, state, None, keep_prompt_state, boundaries)

    async def _submit(
        self, turn: Turn, prompt, params, state, logits, keep_prompt_state: bool, boundaries: list[int] | None = None
    ) -> None:
        loop = asyncio.get_running_loop()
        hit, snapshots, prefix = 0, [], self.prefix
        if state is None and prefix is not None:
            hit, state = prefix.lookup(prompt)
            snapshots = prefix.positions(prompt, boundaries or [], hit)
        turn.cached_tokens = hit

        def emit(event) -> None:
            if event[0] == "snapshot":  # engine thread: keep the prefix state, nothing for the client
                position, snap, logits = event[1]
                prefix.put(prompt[: hit + position], snap, logits)
                return
            with contextlib.suppress(RuntimeError):  # the loop may be gone at shutdown
                loop.call_soon_threadsafe(turn.events.put_nowait, event)

        snapshot_at = [p - hit for p in snapshots]
        turn.seq = Sequence(
            prompt[hit:], params, emit, state=state, logits=logits,
            keep_prompt_state=keep_prompt_state, snapshot_at=snapshot_at,
        )  # fmt: skip
        if not self.engine.alive():
            raise APIError(503, "the engine is not running", code="engine_stopped")
        try:
            self.engine.submit(turn.seq)
        except EngineOverloaded as exc:
            raise APIError(429, str(exc), code="server_overloaded") from exc

    async def next_event(self, turn: Turn, progress: bool = False) -> tuple[str, object]:
        """The turn's next engine event; an ``error`` if the engine thread is gone, so no request waits forever.
        A ``done`` counts the prompt tokens a prefix state covered too, and ends go to the metrics. With
        ``progress``, a prefill that advanced during ``--progress-interval`` seconds without other events gives
        ``("progress", (prefilled, total))`` (tokens of this request's prefill)."""
        wait = min(LIVENESS_S, self.config.progress_interval_s) if progress else LIVENESS_S
        while True:
            try:
                kind, value = await asyncio.wait_for(turn.events.get(), wait)
            except TimeoutError:
                seq = turn.seq
                if progress and seq is not None and turn.reported < seq.prefilled < len(seq.prompt_ids):
                    turn.reported = seq.prefilled  # read from the engine thread's sequence: one int, no lock
                    return "progress", (turn.reported, len(seq.prompt_ids))
                if self.engine.alive():
                    continue
                kind, value = "error", SHUTTING_DOWN
            if kind == "done":
                value = dataclasses.replace(value, prompt_tokens=value.prompt_tokens + turn.cached_tokens)
                if self.metrics is not None:
                    self.metrics.finished(turn.kind, value.ttft_s, value.total_s)
            elif kind == "error" and self.metrics is not None:
                self.metrics.failed(turn.kind, value.code)
            return kind, value

    async def finish(self, turn: Turn, fin: Finished) -> None:
        """Fold the turn into the conversation: state, plus pending tokens and the turn's closing."""
        if turn.conv is None:
            return
        pending = list(fin.pending)
        if turn.kind == "chat":
            pending += self.tokenizer.encode(self.template.closing(fin.ended_turn))
        total = turn.carried + fin.prompt_tokens + fin.completion_tokens - 1 + len(pending)
        added = total - turn.conv.tokens  # a fork's conversation starts empty, a continued one holds its tokens
        try:
            await asyncio.to_thread(self.store.save_turn, turn.conv.id, fin.state, pending, added)
        except ConversationNotFound as exc:
            raise APIError(404, str(exc), param="conversation_id", code="conversation_not_found") from exc
        except StoreUnavailable as exc:
            raise APIError(503, str(exc), code="store_unavailable") from exc
        except OSError as exc:
            raise APIError(
                500, f"the conversation's state could not be stored: {exc}", code="store_write_failed"
            ) from exc
        turn.saved = True

    # ---------------------------------------------------------------- responses
    async def collect(self, turn: Turn) -> tuple[str, Finished]:
        """The whole reply of a non-streamed request: its text and the engine's final event (errors raised)."""
        parts: list[str] = []
        while True:
            kind, value = await self.next_event(turn)
            if kind == "text":
                parts.append(value)
            elif kind == "error":
                raise APIError(value.status, value.message, code=value.code)
            elif kind == "done":
                return "".join(parts), value

    async def respond(self, turn: Turn, req, make_chunk, make_final) -> dict | StreamingResponse:
        """Collect the reply (JSON) or stream it (SSE). ``make_chunk(text)`` / ``make_final(text, fin)``."""
        if not req.stream:
            try:
                text, fin = await self.collect(turn)
                await self.finish(turn, fin)
                return make_final(text, fin)
            finally:
                await self.close_turn(turn)

        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def stream() -> AsyncIterator[str]:  # TurnStream closes the turn, however the stream ends
            while True:
                kind, value = await self.next_event(turn, progress=True)
                if kind == "progress":
                    yield progress_comment(*value)
                elif kind == "first":  # the role chunk goes out with the first token: its arrival is the TTFT
                    yield _sse(make_chunk(None))
                elif kind == "text":
                    yield _sse(make_chunk(value))
                elif kind == "error":
                    yield _sse(error_body(value.status, value.message, None, value.code))
                    return
                else:
                    try:
                        await self.finish(turn, value)
                    except APIError as exc:
                        yield _sse(error_body(exc.status, exc.message, exc.param, exc.code))
                        return
                    final = make_final("", value)
                    yield _sse(make_chunk("", finish_reason=value.finish_reason))
                    if include_usage:
                        yield _sse({**make_chunk(None, usage_only=True), "usage": final["usage"]})
                    yield _sse("[DONE]")
                    return

        return TurnStream(stream(), lambda: self.close_turn(turn), media_type="text/event-stream", headers=SSE_HEADERS)


def _usage(fin: Finished, cached_tokens: int) -> dict:
    return {
        "prompt_tokens": fin.prompt_tokens,
        "completion_tokens": fin.completion_tokens,
        "total_tokens": fin.prompt_tokens + fin.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def register_generation_routes(app: FastAPI, gen: Generator) -> None:
    name = gen.config.model_name

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        params = gen.check_common(req, default_max=16)
        if isinstance(req.prompt, str):
            ids = gen.encode(req.prompt, "prompt")
        elif isinstance(req.prompt[0], str):
            ids = gen.encode(req.prompt[0], "prompt")
        else:
            ids = list(req.prompt)
            bad = next((t for t in ids if not 0 <= t < gen.vocab_size), None)
            if bad is not None:
                raise APIError(400, f"token id {bad} is outside the vocabulary [0, {gen.vocab_size})", param="prompt")
        gen.check_prompt_length(ids, "prompt")
        turn = await gen.open_turn("completion", req)
        try:
            await gen.start(turn, ids, params)
        except BaseException:
            await gen.close_turn(turn)
            raise
        rid, created = "cmpl-" + secrets.token_hex(12), int(time.time())
        conv = {"conversation_id": turn.conv.id} if turn.conv else {}

        def chunk(text, finish_reason=None, usage_only=False):
            choices = (
                []
                if usage_only
                else [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}]
            )
            return {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": name,
                "choices": choices,
                **conv,
            }

        def final(text, fin: Finished):
            body = chunk(text, fin.finish_reason)
            return {**body, "usage": _usage(fin, turn.cached_tokens)}

        return await gen.respond(turn, req, chunk, final)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest):
        params = gen.check_common(req, default_max=gen.config.default_max_tokens)
        params.end_of_turn = gen.template.end_of_turn
        roles = {"developer": "system"}
        messages = [(roles.get(m.role, m.role), m.text()) for m in req.messages]
        ids = gen.encode(gen.template.render(messages), "messages")
        gen.check_prompt_length(ids, "messages")
        turn = await gen.open_turn("chat", req)
        try:
            boundaries = None
            if gen.starts_fresh(turn):  # where a shared system prompt or examples end (the prompt's end is kept anyway)
                ends = [gen.template.render(messages[:k], add_generation_prompt=False) for k in range(1, len(messages))]
                boundaries = text_boundaries(gen.tokenizer.encode, ends, ids)
            await gen.start(turn, ids, params, boundaries)
        except BaseException:
            await gen.close_turn(turn)
            raise
        rid, created = "chatcmpl-" + secrets.token_hex(12), int(time.time())
        conv = {"conversation_id": turn.conv.id} if turn.conv else {}

        def chunk(text, finish_reason=None, usage_only=False):
            if usage_only:
                choices = []
            else:
                delta = {"role": "assistant", "content": ""} if text is None else ({"content": text} if text else {})
                choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
            return {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": name,
                "choices": choices,
                **conv,
            }

        def final(text, fin: Finished):
            message = {"role": "assistant", "content": text}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": fin.finish_reason}
            return {
                "id": rid, "object": "chat.completion", "created": created, "model": name,
                "choices": [choice], "usage": _usage(fin, turn.cached_tokens), **conv,
            }  # fmt: skip

        return await gen.respond(turn, req, chunk, final)
