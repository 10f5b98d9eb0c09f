"""Request bodies of the OpenAI API subset we serve, validated strictly (unknown fields are errors).

Extensions: ``conversation_id`` continues a stored conversation, ``store: true`` starts one from this
request, ``top_k`` limits sampling to the k most likely tokens, ``ignore_eos`` (as in vLLM) lets a reply run past
end-of-sequence tokens to ``max_tokens`` or a stop string.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field

from retnet.serving.errors import APIError

Prob = Annotated[float, Field(ge=0.0, le=1.0)]
MAX_LIST_LIMIT = 100  # the largest page of a listing route


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


# The request fields every generating route shares (the OpenAI ranges; top_k and seed are our extensions).
ModelName = Annotated[str, Field(min_length=1, max_length=256)]
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
TopK = Annotated[int, Field(ge=1)]
Seed = Annotated[int, Field(ge=-(2**63), lt=2**63)]


class _Sampling(_Strict):
    model: ModelName
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    n: Annotated[int, Field(ge=1, le=1)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: (
        Annotated[str, Field(min_length=1, max_length=256)]
        | list[Annotated[str, Field(min_length=1, max_length=256)]]
        | None
    ) = None
    seed: Seed | None = None
    presence_penalty: Annotated[float, Field(ge=0.0, le=0.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=0.0, le=0.0)] | None = None
    logit_bias: Annotated[dict[str, float], Field(max_length=0)] | None = None
    user: Annotated[str, Field(max_length=256)] | None = None
    conversation_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    store: bool | None = None
    ignore_eos: bool = False

    def stop_list(self) -> list[str]:
        return [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else list(self.stop)


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)] | Annotated[list[int], Field(min_length=1)]
    echo: Literal[False] = False
    logprobs: None = None
    best_of: Annotated[int, Field(ge=1, le=1)] | None = None
    suffix: None = None


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: Annotated[str, Field(max_length=64)] | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ResponseFormat(_Strict):
    type: Literal["text"]


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: Literal[False] | None = None
    response_format: ResponseFormat | None = None


# ---------------------------------------------------------------- listing routes' query parameters
def page_params(request: Request, allowed: set[str]) -> tuple[int, str, str | None]:
    """``limit`` (1-100, default 20), ``order`` (asc/desc, default desc) and ``after``, with unknown parameters
    refused by name."""
    query = request.query_params
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise APIError(400, f"unrecognized query parameter: '{unknown[0]}'", param=unknown[0])
    raw = query.get("limit", "20")
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_LIST_LIMIT):
        raise APIError(400, f"'limit' must be an integer from 1 to {MAX_LIST_LIMIT}, got {raw!r}", param="limit")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise APIError(400, f"'order' must be 'asc' or 'desc', got {order!r}", param="order")
    return int(raw), order, query.get("after")


def list_page(data: list[dict], has_more: bool) -> dict:
    """One page of a listing route, in the OpenAI list shape (``first_id``/``last_id`` for the next request)."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
