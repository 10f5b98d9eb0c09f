"""The Responses API subset we serve: the request body (validated strictly) and the objects we answer with.

Text in, text out: ``input`` is a string (one user message) or a list of messages whose content is a string or
``input_text`` / ``output_text`` parts. Tools, files, images and reasoning are not served (unknown fields are
errors naming the field). Extensions, as on the other routes: ``top_k`` and ``seed``.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from retnet.serving.protocol import ModelName, Seed, Temperature, TopK, TopP, _Strict


class InputText(_Strict):
    type: Literal["input_text", "output_text"]
    text: str
    annotations: Annotated[list, Field(max_length=0)] | None = None


class InputMessage(_Strict):
    type: Literal["message"] | None = None
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[InputText]
    id: Annotated[str, Field(max_length=128)] | None = None
    status: Literal["completed", "incomplete", "in_progress"] | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class TextFormat(_Strict):
    type: Literal["text"]


class TextConfig(_Strict):
    format: TextFormat | None = None


class ResponsesRequest(_Strict):
    model: ModelName
    input: Annotated[list[InputMessage], Field(min_length=1)] | str  # the list first: its errors name the item
    instructions: str | None = None
    previous_response_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    store: bool = True
    stream: bool = False
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    seed: Seed | None = None
    metadata: Annotated[dict[str, Annotated[str, Field(max_length=512)]], Field(max_length=16)] | None = None
    user: Annotated[str, Field(max_length=256)] | None = None
    text: TextConfig | None = None
    tools: Annotated[list, Field(max_length=0)] | None = None
    tool_choice: Literal["none", "auto"] | None = None
    parallel_tool_calls: bool | None = None
    truncation: Literal["disabled"] | None = None

    def messages(self) -> list[tuple[str, str]]:
        """``(role, text)`` pairs of this response's input (``developer`` is the system role)."""
        if isinstance(self.input, str):
            return [("user", self.input)]
        return [("system" if m.role == "developer" else m.role, m.text()) for m in self.input]

    def input_items(self, ids: list[str]) -> list[dict]:
        """The input as stored message items (for ``input_items`` and the chat page)."""
        out = []
        for item_id, (role, text) in zip(ids, self.messages()):
            kind = "output_text" if role == "assistant" else "input_text"
            out.append({"id": item_id, "type": "message", "role": role, "status": "completed",
                        "content": [{"type": kind, "text": text}]})  # fmt: skip
        return out


class ResponseBody(BaseModel):
    """What a response object echoes of its request; ``build`` renders the object at any stage."""

    model_config = ConfigDict(frozen=True)
    id: str
    message_id: str
    created_at: int
    model: str
    instructions: str | None
    previous_response_id: str | None
    store: bool
    max_output_tokens: int | None
    temperature: float
    top_p: float
    metadata: dict[str, str]
    user: str | None

    def message(self, text: str, status: str) -> dict:
        content = [] if text is None else [output_text(text)]
        return {"id": self.message_id, "type": "message", "role": "assistant", "status": status, "content": content}

    def build(
        self, status: str, text: str | None = None, *, usage: dict | None = None, incomplete: str | None = None,
        error: dict | None = None,
    ) -> dict:  # fmt: skip
        """The public response object: ``status`` in_progress / completed / incomplete / failed."""
        output = [] if text is None else [self.message(text, "incomplete" if incomplete else "completed")]
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "completed_at": int(time.time()) if status in ("completed", "incomplete") else None,
            "error": error, "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": self.instructions, "max_output_tokens": self.max_output_tokens, "model": self.model,
            "output": output, "parallel_tool_calls": False, "previous_response_id": self.previous_response_id,
            "reasoning": {"effort": None, "summary": None}, "store": self.store, "temperature": self.temperature,
            "text": {"format": {"type": "text"}}, "tool_choice": "none", "tools": [], "top_p": self.top_p,
            "truncation": "disabled", "usage": usage, "user": self.user, "metadata": self.metadata,
        }  # fmt: skip


def output_text(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def usage(context_tokens: int, cached_tokens: int, output_tokens: int) -> dict:
    """Usage in the Responses form. ``input_tokens`` counts everything the reply was conditioned on (the whole
    conversation); ``cached_tokens`` those that came from the stored state and were not processed again."""
    return {
        "input_tokens": context_tokens,
        "input_tokens_details": {"cached_tokens": cached_tokens, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": context_tokens + output_tokens,
    }
