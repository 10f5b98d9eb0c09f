"""ASGI middleware: the optional API key, a request-body size limit and a body-read deadline, all before any
parsing."""

from __future__ import annotations

import hmac
import json

import anyio

from retnet.serving.errors import error_body


async def _send_error(send, status: int, message: str, code: str) -> None:
    body = json.dumps(error_body(status, message, None, code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if status == 408:  # the rest of the body may still come: this connection cannot carry another request
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def authorized(header: str | None, api_key: str | None) -> bool:
    """Whether an ``Authorization`` header value carries ``api_key`` (always true without a key)."""
    if api_key is None:
        return True
    scheme, _, token = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())


class LimitsAndAuth:
    """Rejects oversized bodies (413), bodies not received within ``body_timeout_s`` (408) and, when
    ``api_key`` is set, ``/v1/*`` calls without it (401).

    The body is read here up to the limit and replayed to the app, so a too-large body is refused whether
    or not the client sent Content-Length, and a client that sends half a body cannot hold a request open.
    """

    def __init__(self, app, *, max_body_bytes: int, api_key: str | None, body_timeout_s: float = 30.0) -> None:
        self.app, self.max_body_bytes, self.api_key, self.body_timeout_s = app, max_body_bytes, api_key, body_timeout_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.api_key is not None and scope["path"].startswith("/v1"):
            auth = headers.get(b"authorization", b"").decode("latin-1")
            if not authorized(auth, self.api_key):
                msg = "missing API key" if not auth else "incorrect API key provided"
                return await _send_error(send, 401, msg + "; send 'Authorization: Bearer <key>'", "invalid_api_key")
        too_big = f"request body exceeds the limit of {self.max_body_bytes} bytes"
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await _send_error(send, 400, "invalid Content-Length header", "invalid_request")
            if declared > self.max_body_bytes:
                return await _send_error(send, 413, too_big, "request_too_large")
        chunks, size = [], 0
        with anyio.move_on_after(self.body_timeout_s) as deadline:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body_bytes:
                    return await _send_error(send, 413, too_big, "request_too_large")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        if deadline.cancelled_caught:
            msg = f"the request body was not received within {self.body_timeout_s:g} s"
            return await _send_error(send, 408, msg, "request_timeout")
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
