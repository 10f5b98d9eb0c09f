"""``/v1/responses``: the OpenAI Responses API on top of stored conversation states, with branching.

Every stored response owns the state after it (a conversation of kind ``response`` that nothing changes after
its turn) plus its pending tokens (its last sampled token and the turn's closing). Continuing from a response
(``previous_response_id``) starts a new response from a copy of that state, so any earlier response can be
continued any number of times: regenerate (continue its parent with the same input), edit a message (continue
the parent with another input), try two continuations. Only the pending tokens and the new input are
processed; nothing before the fork point is. ``usage.input_tokens_details.cached_tokens`` counts the tokens
that came from the stored state.

Each stored response also keeps the state after its prompt and the logits of the prompt's last position (a
conversation of kind ``prompt`` plus the logits as safetensors bytes in its record). A request whose previous
response and prompt tokens equal a stored one's (a regenerate) samples from those logits at once: no forward
pass at all. Such a prompt state that was evicted only costs the forward pass over the new input again.

Extension: ``GET /v1/responses`` lists stored responses (``root_id``: one tree; ``roots=true``: one entry per
conversation), for the chat page.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import time
from collections.abc import AsyncIterator

import torch
from fastapi import FastAPI, Request
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from retnet.generation import Finished, SamplingParams
from retnet.models import RetNetState
from retnet.serving.errors import APIError
from retnet.serving.protocol import MAX_LIST_LIMIT, list_page, page_params
from retnet.serving.response_log import RESP_ID, Prompt, ResponseLog, ResponseRecord
from retnet.serving.responses_protocol import ResponseBody, ResponsesRequest, output_text, usage
from retnet.serving.routes import SSE_HEADERS, Generator, Turn, TurnStream, progress_comment
from retnet.serving.state_io import StateFileError, check_state
from retnet.serving.store import Conversation, ConversationBusy, ConversationNotFound, StoreFull

KIND = "response"  # the conversation kind of response states: the chat routes refuse to continue them
PROMPT_KIND = "prompt"  # the kind of states after a response's prompt (regenerate without a forward pass)


def _event(seq: list[int], kind: str, **fields) -> str:
    """One server-sent event of the Responses stream (``event:`` line plus JSON with ``type`` and the running
    ``sequence_number``)."""
    seq[0] += 1
    data = {"type": kind, "sequence_number": seq[0] - 1, **fields}
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n"


class Responses:
    """The routes' logic: records, their states, and one response's life."""

    def __init__(self, gen: Generator, log: ResponseLog) -> None:
        self.gen, self.log, self.store = gen, log, gen.store

    async def live(self, resp_id: str, param: str) -> tuple[ResponseRecord, Conversation]:
        """The stored response and its state's record, or a 404 naming ``param``; a record whose state was
        evicted or expired is dropped here."""
        rec = await asyncio.to_thread(self.log.get, resp_id) if RESP_ID.fullmatch(resp_id) else None
        if rec is None:
            raise APIError(404, f"response {resp_id!r} not found", param=param, code="response_not_found")
        try:
            conv = await asyncio.to_thread(self.store.get, rec.conv_id)
        except ConversationNotFound as exc:
            await asyncio.to_thread(self.drop, rec)
            raise APIError(
                404, f"response {resp_id!r} not found (its state was {exc.reason})", param=param,
                code="response_not_found",
            ) from exc  # fmt: skip
        return rec, conv

    def sampling(self, req: ResponsesRequest) -> SamplingParams:
        n = self.gen.check_model_and_length(
            req.model, req.max_output_tokens, "max_output_tokens", self.gen.config.default_max_tokens
        )
        return SamplingParams(
            max_tokens=n,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            seed=req.seed,
            end_of_turn=self.gen.template.end_of_turn,
        )

    async def create(self, req: ResponsesRequest):
        gen = self.gen
        params = self.sampling(req)
        messages = req.messages()
        if req.instructions:
            messages = [("system", req.instructions)] + messages
        ids = gen.encode(gen.template.render(messages), "input")
        gen.check_prompt_length(ids, "input")
        parent, base = None, None
        if req.previous_response_id is not None:
            parent, base = await self.live(req.previous_response_id, "previous_response_id")
        key = hashlib.sha256(json.dumps([req.previous_response_id, ids]).encode()).hexdigest()
        stored_prompt, initial = await self.stored_prompt(key)
        conv = None
        if req.store:
            try:
                conv = await asyncio.to_thread(self.store.create, KIND, acquire=True)
            except StoreFull as exc:
                raise APIError(429, str(exc), param="store", code="store_full") from exc
        turn = Turn("chat", conv, created_conv=conv is not None, base=base, base_param="previous_response_id")
        try:
            if initial is not None:  # a regenerate: sample from the stored logits, no forward pass
                await gen.start(turn, [], params, initial=initial)
            else:
                await gen.start(turn, ids, params, keep_prompt_state=conv is not None)
        except BaseException:
            await gen.close_turn(turn)
            raise
        body = ResponseBody(
            id="resp_" + secrets.token_hex(12), message_id="msg_" + secrets.token_hex(12),
            created_at=int(time.time()), model=gen.config.model_name, instructions=req.instructions,
            previous_response_id=req.previous_response_id, store=req.store, max_output_tokens=req.max_output_tokens,
            temperature=params.temperature, top_p=1.0 if req.top_p is None else req.top_p,
            metadata=req.metadata or {}, user=req.user,
        )  # fmt: skip
        cached = turn.carried
        items = req.input_items([f"msg_{secrets.token_hex(12)}" for _ in messages])
        root = parent.root_id if parent is not None else body.id

        async def complete(text: str, fin: Finished) -> dict:
            """Store the state and the record; the final response object."""
            await gen.finish(turn, fin)
            incomplete = "max_output_tokens" if fin.finish_reason == "length" else None
            final = body.build(
                "incomplete" if incomplete else "completed", text,
                usage=usage(cached + fin.prompt_tokens, cached, fin.completion_tokens), incomplete=incomplete,
            )  # fmt: skip
            if conv is not None:
                prompt = stored_prompt
                if prompt is None and fin.prompt_state is not None:
                    state, logits = fin.prompt_state
                    prompt = await asyncio.to_thread(self.keep_prompt, key, state, logits, cached + fin.prompt_tokens)
                rec = ResponseRecord(
                    body.id, conv.id, req.previous_response_id, root, time.time(), final, items, prompt
                )
                try:
                    await asyncio.to_thread(self.log.add, rec)
                except Exception as exc:
                    turn.saved = False  # close_turn drops the state nobody can reach
                    raise APIError(500, f"the response could not be stored: {exc}", code="store_write_failed") from exc
            return final

        if not req.stream:
            try:
                return await complete(*await gen.collect(turn))
            finally:
                await gen.close_turn(turn)

        async def stream() -> AsyncIterator[str]:  # TurnStream closes the turn, however the stream ends
            seq = [0]
            where = {"item_id": body.message_id, "output_index": 0, "content_index": 0}
            yield _event(seq, "response.created", response=body.build("in_progress"))
            yield _event(seq, "response.in_progress", response=body.build("in_progress"))
            yield _event(seq, "response.output_item.added", output_index=0, item=body.message(None, "in_progress"))
            yield _event(seq, "response.content_part.added", **where, part=output_text(""))
            parts: list[str] = []
            while True:
                kind, value = await gen.next_event(turn, progress=True)
                if kind == "progress":
                    yield progress_comment(*value)
                elif kind == "text":
                    parts.append(value)
                    yield _event(seq, "response.output_text.delta", **where, delta=value, logprobs=[])
                elif kind == "error" or kind == "done":
                    try:
                        if kind == "error":
                            raise APIError(value.status, value.message, code=value.code)
                        final = await complete("".join(parts), value)
                    except APIError as exc:
                        yield _event(seq, "error", code=exc.code, message=exc.message, param=exc.param)
                        error = {"code": "server_error", "message": exc.message}
                        yield _event(seq, "response.failed", response=body.build("failed", "".join(parts), error=error))
                        return
                    text = "".join(parts)
                    item = final["output"][0]
                    yield _event(seq, "response.output_text.done", **where, text=text, logprobs=[])
                    yield _event(seq, "response.content_part.done", **where, part=output_text(text))
                    yield _event(seq, "response.output_item.done", output_index=0, item=item)
                    yield _event(seq, f"response.{final['status']}", response=final)
                    return

        return TurnStream(stream(), lambda: gen.close_turn(turn), media_type="text/event-stream", headers=SSE_HEADERS)

    async def stored_prompt(self, key: str) -> tuple[Prompt | None, tuple[RetNetState, torch.Tensor, int] | None]:
        """The stored prompt with this key and what starts a sequence from it, or ``(None, None)``: none was
        stored, its state was evicted, or it is unusable (then the prompt is simply processed again)."""
        prompt = await asyncio.to_thread(self.log.prompt, key)
        if prompt is None:
            return None, None
        try:
            conv = await asyncio.to_thread(self.store.get, prompt.conv_id)
            state = await asyncio.to_thread(self.store.load, conv)
            check_state(state, self.gen.state_template)
            logits = load_tensors(prompt.logits)["logits"]
        except (ConversationNotFound, OSError, StateFileError, ValueError, SafetensorError, KeyError):
            return None, None
        if logits.shape != (1, self.gen.vocab_size) or not bool(logits.isfinite().all()):
            return None, None
        return prompt, (state, logits, prompt.tokens)

    def keep_prompt(self, key: str, state: RetNetState, logits: torch.Tensor, tokens: int) -> Prompt | None:
        """Store the state after a prompt (a conversation of kind ``prompt``) and describe it with its logits;
        None when the store has no room (the prompt is then processed again on a regenerate)."""
        try:
            conv = self.store.create(PROMPT_KIND, acquire=True)
        except StoreFull:
            return None
        try:
            self.store.save_turn(conv.id, state, [], tokens)
        except (OSError, ConversationNotFound):
            with contextlib.suppress(ConversationNotFound, ConversationBusy):
                self.store.release(conv.id)
                self.store.delete(conv.id)
            return None
        finally:
            self.store.release(conv.id)
        return Prompt(key, conv.id, tokens, save_tensors({"logits": logits.detach().cpu().contiguous()}))

    def drop(self, rec: ResponseRecord) -> None:
        """Forget a record, and its prompt state once no other record shares it."""
        self.log.delete(rec.id)
        if rec.prompt is not None and self.log.prompt_users(rec.prompt.conv_id) == 0:
            with contextlib.suppress(ConversationNotFound, ConversationBusy):
                self.store.delete(rec.prompt.conv_id)

    async def delete(self, resp_id: str) -> dict:
        rec, conv = await self.live(resp_id, "response_id")
        try:
            await asyncio.to_thread(self.store.delete, conv.id)
        except ConversationBusy as exc:
            raise APIError(409, str(exc), param="response_id", code="response_busy") from exc
        except ConversationNotFound:
            pass
        await asyncio.to_thread(self.drop, rec)
        return {"id": rec.id, "object": "response.deleted", "deleted": True}

    async def listing(self, records: list[ResponseRecord], more: bool, public) -> dict:
        """A list object of the records whose states are alive (the others are dropped on the way)."""
        data = []
        for rec in records:
            try:
                await asyncio.to_thread(self.store.get, rec.conv_id)
            except ConversationNotFound:
                await asyncio.to_thread(self.drop, rec)
                continue
            data.append(public(rec))
        return list_page(data, more)

    def prune(self) -> None:
        """Drop the records whose states were evicted or expired (housekeeping)."""
        after = None
        while True:
            page, more = self.log.list(MAX_LIST_LIMIT, after=after, order="asc")
            for rec in page:
                with contextlib.suppress(ConversationNotFound):
                    self.store.get(rec.conv_id)
                    continue
                self.drop(rec)
            if not more or not page:
                return
            after = page[-1].id


def register_response_routes(app: FastAPI, gen: Generator, log: ResponseLog) -> Responses:
    responses = Responses(gen, log)

    @app.post("/v1/responses")
    async def create_response(req: ResponsesRequest):
        return await responses.create(req)

    @app.api_route("/v1/responses", methods=["GET", "HEAD"])
    async def list_responses(request: Request) -> dict:
        """Stored responses (an extension): the page parameters of ``/v1/conversations``, plus ``root_id`` (one
        conversation tree) and ``roots=true`` (only the first response of each conversation). Each entry is the
        response object plus ``root_id`` and ``input`` (its input items)."""
        limit, order, after = page_params(request, {"limit", "after", "order", "root_id", "roots"})
        roots = request.query_params.get("roots", "false")
        if roots not in ("true", "false"):
            raise APIError(400, f"'roots' must be 'true' or 'false', got {roots!r}", param="roots")
        try:
            page, more = await asyncio.to_thread(
                log.list, limit, after=after, order=order, root_id=request.query_params.get("root_id"),
                roots_only=roots == "true",
            )  # fmt: skip
        except LookupError as exc:
            raise APIError(404, f"response {after!r} not found", param="after", code="response_not_found") from exc
        return await responses.listing(page, more, lambda r: {**r.body, "root_id": r.root_id, "input": r.input})

    @app.api_route("/v1/responses/{response_id}", methods=["GET", "HEAD"])
    async def get_response(response_id: str) -> dict:
        rec, _ = await responses.live(response_id, "response_id")
        return rec.body

    @app.delete("/v1/responses/{response_id}")
    async def delete_response(response_id: str) -> dict:
        return await responses.delete(response_id)

    @app.api_route("/v1/responses/{response_id}/input_items", methods=["GET", "HEAD"])
    async def input_items(response_id: str, request: Request) -> dict:
        """The response's input messages (``order`` desc by default, as OpenAI; ``limit``, ``after``)."""
        limit, order, after = page_params(request, {"limit", "after", "order", "include"})
        rec, _ = await responses.live(response_id, "response_id")
        items = rec.input if order == "asc" else rec.input[::-1]
        if after is not None:
            at = next((i for i, it in enumerate(items) if it["id"] == after), None)
            if at is None:
                raise APIError(404, f"input item {after!r} not found", param="after", code="item_not_found")
            items = items[at + 1 :]
        page = items[:limit]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }

    return responses
