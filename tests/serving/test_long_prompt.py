"""A long prompt through the server: prefilled chunk by chunk with its progress visible (SSE comments on a
streaming request, INFO lines in the log), then the tokens of a direct run, and continued as a conversation."""

from __future__ import annotations

import json
import logging
import random

import openai
import pytest
from fastapi.testclient import TestClient

from retnet.serving.app import create_app
from retnet.serving.config import ServerConfig
from tests.serving.helpers import make_model_dir
from tests.serving.test_server import Reference

TOKENS = 20_000
CHUNK = 64


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("m") / "m")


def document(n: int) -> str:
    """``n`` characters of lowercase words: ``n`` tokens for the byte tokenizer."""
    rng = random.Random(5)
    return "".join(rng.choice("abcdefghij ") for _ in range(n))


def read_stream(client: TestClient, path: str, body: dict) -> tuple[list[tuple[int, int]], list[dict]]:
    """The progress comments and the data events of one streaming request."""
    progress, events = [], []
    with client.stream("POST", path, json={**body, "stream": True}) as resp:
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            if line.startswith(": prefill "):
                done, total = line.removeprefix(": prefill ").split("/")
                progress.append((int(done), int(total)))
            elif line.startswith("data: {"):
                events.append(json.loads(line[6:]))
    return progress, events


def test_long_prompt_reports_progress_and_gives_the_tokens_of_a_direct_run(model_dir, tmp_path, caplog):
    ref = Reference(model_dir)
    doc = document(TOKENS)
    ids = ref.tok.encode(doc)
    assert len(ids) == TOKENS
    config = ServerConfig(
        model_dir, model_name="m", data_dir=tmp_path / "d", threads=1, dtype="float64", prefill_chunk=CHUNK,
        max_prompt_tokens=TOKENS, progress_interval_s=0.01, prefix_cache_bytes=0,
    )  # fmt: skip
    caplog.set_level(logging.INFO, logger="retnet.generation")
    with TestClient(create_app(config)) as client:
        body = {"model": "m", "prompt": doc, "max_tokens": 8, "temperature": 0, "store": True}
        progress, events = read_stream(client, "/v1/completions", body)
        # progress: several comments, growing, every one short of the whole prompt
        assert len(progress) >= 2, progress
        done = [d for d, _ in progress]
        assert done == sorted(set(done)) and 0 < done[0] and done[-1] < TOKENS
        assert {t for _, t in progress} == {TOKENS}
        assert any(f"of {TOKENS} prompt tokens" in r.getMessage() for r in caplog.records)
        # the reply is the direct run's, token for token
        want = ref.continue_ids(ids, 8)
        assert "".join(e["choices"][0]["text"] for e in events if e["choices"]) == ref.text(want)
        conv = events[0]["conversation_id"]

        # the document is now a conversation like any other: the next turn processes only its own tokens
        more = " and then?"
        follow = {"model": "m", "prompt": more, "max_tokens": 8, "temperature": 0, "conversation_id": conv}
        r = client.post("/v1/completions", json=follow)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == ref.text(ref.continue_ids(ids + want + ref.tok.encode(more), 8))
        assert r.json()["usage"]["prompt_tokens"] == 1 + len(more)  # the pending token and the new text
        assert client.get(f"/v1/conversations/{conv}").json()["tokens"] >= TOKENS

        # OpenAI clients skip the comments: chat completions and Responses streams of a long prompt still parse
        oai = openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=client, max_retries=0)
        chunks = oai.chat.completions.create(
            model="m", messages=[{"role": "user", "content": doc[:-100]}], max_tokens=4, temperature=0, stream=True
        )
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
        events = list(
            oai.responses.create(model="m", input=doc[:-100], max_output_tokens=4, temperature=0, stream=True)
        )
        assert events[-1].type in ("response.completed", "response.incomplete")
        assert events[-1].response.usage.input_tokens > TOKENS - 100
        fresh = {"model": "m", "input": doc[50:-50], "max_output_tokens": 2}  # not a regenerate of the one above
        progress, _ = read_stream(client, "/v1/responses", fresh)
        assert progress and all(t > TOKENS - 100 for _, t in progress)
