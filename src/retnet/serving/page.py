"""``GET /``: the web chat page, plain HTML/JS/CSS shipped as package data (no build step).

The page talks only to this server's own API (``/v1/responses``, ``/health``), so it needs nothing the API
does not offer; with an API key configured it asks for the key and sends it like any client.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import Response

from retnet.serving.errors import APIError

FILES = {"chat.js": "text/javascript", "chat.css": "text/css"}
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


def _read(name: str) -> bytes:
    return resources.files("retnet.serving").joinpath("static", name).read_bytes()


def register_page(app: FastAPI) -> None:
    page = {name: _read(name) for name in ("chat.html", *FILES)}  # read once, at start: a missing file fails then

    @app.api_route("/", methods=["GET", "HEAD"])
    async def chat_page() -> Response:
        return Response(page["chat.html"], media_type="text/html; charset=utf-8", headers=HEADERS)

    @app.api_route("/static/{name}", methods=["GET", "HEAD"])
    async def static_file(name: str) -> Response:
        if name not in FILES:
            raise APIError(404, f"no static file {name!r}", param="name", code="not_found")
        return Response(page[name], media_type=FILES[name] + "; charset=utf-8", headers=HEADERS)
