"""``create_app``: the FastAPI application (routes, errors, limits) around one engine and one store."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import itertools
import json
import logging
import time
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from retnet.data.tokenizers import Tokenizer
from retnet.generation import Engine
from retnet.generation.sampling import invalid_rows
from retnet.models import RetNetState, load_pretrained
from retnet.models.decode_step import make_decode_step
from retnet.models.directory import CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE
from retnet.models.quantize import check_quantize, quantize_int8
from retnet.runtime.malloc import limit_arenas, trim
from retnet.serving.chat_template import TEMPLATE_NAME, ChatTemplate
from retnet.serving.config import ServerConfig
from retnet.serving.errors import APIError, error_response, install_error_handlers
from retnet.serving.metrics import CONTENT_TYPE, Metrics
from retnet.serving.middleware import LimitsAndAuth, authorized
from retnet.serving.page import register_page
from retnet.serving.prefix_cache import PrefixCache
from retnet.serving.protocol import list_page, page_params
from retnet.serving.response_log import ResponseLog
from retnet.serving.response_log_sqlite import SQLiteResponseLog
from retnet.serving.responses import register_response_routes
from retnet.serving.routes import Generator, register_generation_routes
from retnet.serving.state_io import first_non_finite, state_tensors
from retnet.serving.store import (
    CONV_ID,
    ConversationBusy,
    ConversationNotFound,
    ConversationStore,
    StoreError,
    StoreFull,
    StoreUnavailable,
)
from retnet.serving.store_sqlite import SQLiteStore

log = logging.getLogger("retnet.serving")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
FULL_HASH_LIMIT = 1 << 30
PROBE_TOKENS = 8


class ModelCheckError(ValueError):
    """The model produces non-finite logits or states on a short probe: it would answer nothing but errors."""


def probe_model(model, model_dir: Path, dtype: str) -> RetNetState:
    """A few tokens through a chunkwise prefill and one recurrent step (the engine's two paths); logits and
    states must be finite. Returns the final state (a template of the state's layout)."""
    vocab = model.config.vocab_size
    ids = (torch.arange(PROBE_TOKENS, device=model.device) * 7919 % vocab)[None]
    with torch.no_grad():
        first = model(ids, use_cache=True, mode="auto")
        step = model(ids[:, -1:], state=first.state, use_cache=True, mode="recurrent")
    finite_states = first_non_finite(state_tensors(step.state)) is None
    for out in (first, step):
        if bool(invalid_rows(out.logits[0].float()).any()) or not finite_states:
            raise ModelCheckError(
                f"{model_dir}: the model produces non-finite values (NaN or inf) on a probe of {PROBE_TOKENS} tokens "
                f"in {dtype}; check its weights and config.json (e.g. embed_scale, rotary_base)"
            )
    return step.state


def model_fingerprint(model_dir: Path) -> str:
    """A hash of config, tokenizer, chat template and weights: stored states only fit the model they came from."""
    h = hashlib.sha256()
    for name in (CONFIG_FILE, TOKENIZER_FILE, TEMPLATE_NAME, WEIGHTS_FILE):
        path = model_dir / name
        if not path.is_file():
            h.update(f"{name}:absent".encode())
            continue
        size = path.stat().st_size
        h.update(f"{name}:{size}".encode())
        with open(path, "rb") as fh:
            if size <= FULL_HASH_LIMIT:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            else:  # huge weights: the header (names, shapes, offsets), the size and the modification time
                h.update(fh.read(1 << 20) + str(path.stat().st_mtime_ns).encode())
    return h.hexdigest()


def open_store(config: ServerConfig, fingerprint: str) -> ConversationStore:
    """The store ``--store`` names: SQLite under ``--data-dir`` (default) or a Redis server shared by replicas."""
    bounds = dict(
        fingerprint=fingerprint,
        max_count=config.max_conversations,
        max_bytes=config.max_store_bytes,
        ttl_s=config.conversation_ttl_s,
        cache_bytes=config.state_cache_bytes,
    )
    if config.store == "sqlite":
        return SQLiteStore(config.data_dir, **bounds)
    try:
        from retnet.serving.store_redis import RedisStore  # the optional extra "redis"
    except ImportError as exc:
        raise StoreError(f"--store {config.store} needs the redis client: pip install 'retnet[redis]' ({exc})") from exc

    return RedisStore(config.store, lock_ttl_s=config.redis_lock_ttl_s, **bounds)


def open_response_log(config: ServerConfig, store: ConversationStore) -> ResponseLog:
    """The Responses API's records next to the conversation states: in the same Redis database for a Redis
    store (so every replica continues every response), else in SQLite under ``--data-dir``."""
    if config.store == "sqlite":
        return SQLiteResponseLog(config.data_dir)
    from retnet.serving.response_log_redis import RedisResponseLog

    return RedisResponseLog(store.r, store.where)


def create_app(config: ServerConfig) -> FastAPI:
    """Load the model, tokenizer and store (errors raise here, before serving) and build the app."""
    limit_arenas()
    if config.threads:
        torch.set_num_threads(config.threads)
    model = load_pretrained(config.model_dir, dtype=DTYPES[config.dtype])
    probe = probe_model(model, config.model_dir, config.dtype)  # refuse a broken model; the state layout
    check_quantize(config.quantize, model.device)
    if config.quantize == "int8":
        model = quantize_int8(model)
    tokenizer = Tokenizer.load(config.model_dir, eos_token_id=model.config.eos_token_id)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"{config.model_dir / TOKENIZER_FILE} has {tokenizer.vocab_size} tokens but the model's vocab_size "
            f"is {model.config.vocab_size}"
        )
    template = ChatTemplate.from_dir(config.model_dir)
    store = open_store(config, model_fingerprint(config.model_dir) + f":{config.dtype}")
    response_log = open_response_log(config, store)
    engine = Engine(
        model,
        tokenizer,
        max_batch=config.max_batch,
        max_queue=config.max_queue,
        prefill_chunk=config.prefill_chunk,
        threads=config.threads,
        decode_step=make_decode_step(model, compile=config.compile),
    )
    prefix = PrefixCache(config.prefix_cache_bytes, config.prefix_every) if config.prefix_cache_bytes else None
    metrics = Metrics(engine.load, store.stats, prefix.stats if prefix else PrefixCache(0, 0).stats)
    state_bytes = probe.nbytes()
    started = time.time()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        gc.collect()
        gc.freeze()  # the model, torch and the libraries are permanent: keep full collections off them
        engine.start()

        async def housekeeping():
            for n in itertools.count(1):
                await asyncio.sleep(5)
                await asyncio.to_thread(trim)
                if n % 12 == 0:
                    await asyncio.to_thread(store.sweep)
                    await asyncio.to_thread(responses.prune)

        task = asyncio.create_task(housekeeping())
        try:
            yield
        finally:
            task.cancel()
            engine.stop()
            store.close()
            response_log.close()

    app = FastAPI(title="retnet serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.store, app.state.config = engine, store, config
    app.state.prefix_cache, app.state.metrics = prefix, metrics
    install_error_handlers(app)

    @app.exception_handler(StoreUnavailable)
    async def _store_unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
        return error_response(503, str(exc), code="store_unavailable")

    gen = Generator(config, engine, store, tokenizer, template, model.config.vocab_size, probe, prefix, metrics)
    register_generation_routes(app, gen)
    responses = register_response_routes(app, gen, response_log)
    register_page(app)

    model_card = {"id": config.model_name, "object": "model", "created": int(started), "owned_by": "retnet"}

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health(request: Request) -> JSONResponse:
        ok = engine.alive()
        body = {"status": "ok" if ok else "engine stopped", "auth": config.api_key is not None}
        if authorized(request.headers.get("authorization"), config.api_key):  # counts and limits: key holders only
            body |= {
                "model": config.model_name,
                "uptime_s": round(time.time() - started, 3),
                "state_bytes_per_conversation": state_bytes,
                "engine": engine.load(),
                "store": await asyncio.to_thread(store.stats),
                "prefix_cache": prefix.stats() if prefix else None,
                "limits": {
                    "max_prompt_tokens": config.max_prompt_tokens,
                    "max_tokens": config.max_tokens_limit,
                    "max_body_bytes": config.max_body_bytes,
                    "max_batch": config.max_batch,
                    "max_queue": config.max_queue,
                },
            }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.api_route("/metrics", methods=["GET", "HEAD"])
    async def metrics_route(request: Request) -> Response:
        """Prometheus text format; needs the API key when one is configured."""
        if not authorized(request.headers.get("authorization"), config.api_key):
            raise APIError(401, "/metrics needs 'Authorization: Bearer KEY'", code="invalid_api_key")
        return Response(await asyncio.to_thread(metrics.render), media_type=CONTENT_TYPE)

    @app.api_route("/v1/models", methods=["GET", "HEAD"])
    async def models() -> dict:
        return {"object": "list", "data": [model_card]}

    @app.api_route("/v1/models/{model_id}", methods=["GET", "HEAD"])
    async def model_info(model_id: str) -> dict:
        if model_id != config.model_name:
            raise APIError(404, f"the model '{model_id}' does not exist", param="model", code="model_not_found")
        return model_card

    @app.api_route("/v1/conversations", methods=["GET", "HEAD"])
    async def list_conversations(request: Request) -> dict:
        """Stored conversations, newest first by default; ``limit`` (1-100, default 20), ``after`` (an id from
        the previous page's ``last_id``) and ``order`` (``desc`` or ``asc``) page through them."""
        limit, order, after = page_params(request, {"limit", "after", "order"})
        if after is not None and not CONV_ID.fullmatch(after):
            raise APIError(400, f"'after' must be a conversation id, got {after!r}", param="after")
        try:
            page, more = await asyncio.to_thread(store.list, limit, after=after, order=order)
        except ConversationNotFound as exc:
            raise APIError(404, str(exc), param="after", code="conversation_not_found") from exc
        data = [c.public() for c in page]
        return list_page(data, more)

    @app.post("/v1/conversations")
    async def create_conversation(request: Request) -> dict:
        body = await request.body()
        kind = "chat"
        if body.strip():
            try:
                data = json.loads(body)
            except ValueError as exc:
                raise APIError(400, "the request body is not valid JSON", code="invalid_json") from exc
            if not isinstance(data, dict) or set(data) - {"kind"}:
                raise APIError(400, "the body may only hold 'kind' ('chat' or 'completion')", param="kind")
            kind = data.get("kind", "chat")
            if kind not in ("chat", "completion"):
                raise APIError(400, "'kind' must be 'chat' or 'completion'", param="kind")
        try:
            conv = await asyncio.to_thread(store.create, kind)
        except StoreFull as exc:
            raise APIError(429, str(exc), code="store_full") from exc
        return conv.public()

    @app.api_route("/v1/conversations/{conv_id}", methods=["GET", "HEAD"])
    async def get_conversation(conv_id: str) -> dict:
        try:
            return (await asyncio.to_thread(store.get, conv_id)).public()
        except ConversationNotFound as exc:
            raise APIError(404, str(exc), param="conversation_id", code="conversation_not_found") from exc

    @app.delete("/v1/conversations/{conv_id}")
    async def delete_conversation(conv_id: str) -> dict:
        try:
            await asyncio.to_thread(store.delete, conv_id)
        except ConversationNotFound as exc:
            raise APIError(404, str(exc), param="conversation_id", code="conversation_not_found") from exc
        except ConversationBusy as exc:
            raise APIError(409, str(exc), param="conversation_id", code="conversation_busy") from exc
        return {"id": conv_id, "object": "conversation.deleted", "deleted": True}

    app.add_middleware(
        LimitsAndAuth,
        max_body_bytes=config.max_body_bytes,
        api_key=config.api_key,
        body_timeout_s=config.request_timeout_s,
    )
    return app
