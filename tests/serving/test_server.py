"""A real ``retnet serve`` process on 127.0.0.1 driven by the official ``openai`` client.

The server runs in float64, so its greedy replies equal an in-process reference computed with
``retnet.generation.generate`` token for token.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import openai
import pytest
import torch

from retnet.data.tokenizers import Tokenizer
from retnet.generation import generate
from retnet.models import load_pretrained
from retnet.serving.chat_template import ChatTemplate
from tests.serving.helpers import ServerProcess, make_model_dir

KEY = "sk-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "tiny-retnet"
pytestmark = pytest.mark.slow  # one server start (plus a restart): ~10-30 s on 2 cores


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("served") / MODEL)


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    data = tmp_path_factory.mktemp("data") / "conversations"
    args = ["--dtype", "float64", "--max-prompt-tokens", "300", "--max-tokens", "20000", "--max-body-bytes", "20000"]
    proc = ServerProcess(model_dir, data, *args, api_key=KEY)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def ref(model_dir):
    return Reference(model_dir)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0, timeout=60)


class Reference:
    """Greedy replies computed in-process, one pass over the whole token sequence."""

    def __init__(self, model_dir) -> None:
        self.model = load_pretrained(model_dir, dtype=torch.float64)
        self.tok = Tokenizer.load(model_dir, self.model.config.eos_token_id)
        self.tpl = ChatTemplate()

    def continue_ids(self, ids: list[int], n: int) -> list[int]:
        """Greedy tokens, up to and including an end-of-sequence token."""
        seqs, _ = generate(self.model, torch.tensor([ids]), max_new_tokens=n, temperature=0)
        out = seqs[0, len(ids) :].tolist()
        cut = next((i for i, t in enumerate(out) if t in self.tok.eos_token_ids), None)
        out = out if cut is None else out[: cut + 1]
        assert self.tpl.end_of_turn not in self.text(out)
        return out

    def text(self, ids: list[int]) -> str:
        return self.tok.decode([t for t in ids if t not in self.tok.eos_token_ids])

    def completion(self, prompt: str, n: int) -> str:
        return self.text(self.continue_ids(self.tok.encode(prompt), n))

    def chat(self, turns: list[list[tuple[str, str]]], n: int) -> list[str]:
        """Replies to each turn, every reply generated from the whole conversation so far."""
        ids, replies = [], []
        for messages in turns:
            ids += self.tok.encode(self.tpl.render(messages))
            out = self.continue_ids(ids, n)
            replies.append(self.text(out))
            ended = bool(set(out) & self.tok.eos_token_ids)
            ids += out + self.tok.encode(self.tpl.closing(ended))
        return replies


def post(server, path, body=None, *, content=None, headers=None, key=KEY):
    h = {"Authorization": f"Bearer {key}"} if key else {}
    h.update(headers or {})
    return httpx.post(server.base_url + path, json=body, content=content, headers=h, timeout=60)


def assert_openai_error(resp, status):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str)
    return err


# ---------------------------------------------------------------------------------------------- basics
def test_models_and_health(server, client):
    assert [m.id for m in client.models.list()] == [MODEL]
    assert httpx.get(server.base_url + "/health").json() == {"status": "ok", "auth": True}  # no key: no details
    health = httpx.get(server.base_url + "/health", headers=AUTH).json()
    assert health["status"] == "ok" and health["auth"] is True
    assert health["state_bytes_per_conversation"] > 0
    assert {"conversations", "bytes", "max_conversations", "max_bytes", "eviction_policy"} <= set(health["store"])


def test_completion_equals_reference(client, ref):
    r = client.completions.create(model=MODEL, prompt="Hello, RetNet", max_tokens=12, temperature=0)
    assert r.choices[0].text == ref.completion("Hello, RetNet", 12)
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (13, 12)


def test_chat_equals_reference(client, ref):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=10, temperature=0)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == ref.chat([[("system", "Be brief."), ("user", "Hi!")]], 10)[0]


def test_streaming_chat_and_completion(client, ref):
    msgs = [{"role": "user", "content": "Stream please"}]
    stream = client.chat.completions.create(
        model=MODEL, messages=msgs, max_tokens=15, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ref.chat([[("user", "Stream please")]], 15)[0]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("length", "stop")
    assert chunks[-1].usage.completion_tokens == len(
        ref.continue_ids(ref.tok.encode(ref.tpl.render([("user", "Stream please")])), 15)
    )
    parts = list(client.completions.create(model=MODEL, prompt="abc", max_tokens=9, temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in parts) == ref.completion("abc", 9)


# ---------------------------------------------------------------------------------------------- conversations
TURN1 = [("system", "You are a poet."), ("user", "Write a line.")]
TURN2 = [("user", "Another one.")]


def chat_turn(client, messages, **extra):
    msgs = [{"role": r, "content": c} for r, c in messages]
    return client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=12, temperature=0, extra_body=extra)


def test_two_turn_conversation_equals_one_pass(server, client, ref):
    first = chat_turn(client, TURN1, store=True)
    conv = first.conversation_id
    assert conv.startswith("conv_")
    second = chat_turn(client, TURN2, conversation_id=conv)
    assert second.conversation_id == conv
    want = ref.chat([TURN1, TURN2], 12)
    assert [first.choices[0].message.content, second.choices[0].message.content] == want
    # the second turn processed only its new tokens: last reply token + closing + the new message
    new = 1 + len(ref.tok.encode(ref.tpl.end_of_turn)) + len(ref.tok.encode(ref.tpl.render(TURN2)))
    assert second.usage.prompt_tokens == new
    info = httpx.get(f"{server.base_url}/v1/conversations/{conv}", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert info["turns"] == 2 and info["state_bytes"] > 0


def test_completion_conversation_continues_text(client, ref):
    a = client.completions.create(model=MODEL, prompt="Once", max_tokens=6, temperature=0, extra_body={"store": True})
    b = client.completions.create(
        model=MODEL, prompt=" upon", max_tokens=6, temperature=0, extra_body={"conversation_id": a.conversation_id}
    )
    ids = ref.tok.encode("Once")
    first = ref.continue_ids(ids, 6)
    second = ref.continue_ids(ids + first + ref.tok.encode(" upon"), 6)
    assert (a.choices[0].text, b.choices[0].text) == (ref.text(first), ref.text(second))


def test_ignore_eos_runs_past_the_end_of_sequence_to_max_tokens(client, ref):
    want = ref.continue_ids(ref.tok.encode("abc"), 40)
    assert len(want) < 40 and want[-1] in ref.tok.eos_token_ids  # the model ends this reply early
    plain = client.completions.create(model=MODEL, prompt="abc", max_tokens=40, temperature=0)
    assert (plain.choices[0].finish_reason, plain.usage.completion_tokens) == ("stop", len(want))
    long = client.completions.create(
        model=MODEL, prompt="abc", max_tokens=40, temperature=0, extra_body={"ignore_eos": True}
    )
    assert (long.choices[0].finish_reason, long.usage.completion_tokens) == ("length", 40)
    assert long.choices[0].text.startswith(plain.choices[0].text)  # the end-of-sequence token adds no text


def test_busy_conversation_is_409_and_a_dropped_turn_changes_nothing(server, client):
    conv = chat_turn(client, TURN1, store=True).conversation_id
    msgs = [{"role": "user", "content": "long"}]
    # ignore_eos: a reply that could end by itself (this model samples an end-of-sequence token within a few
    # hundred tokens) might be complete, and rightly stored, before the client drops it
    with client.chat.completions.create(
        model=MODEL, messages=msgs, max_tokens=20000, stream=True,
        extra_body={"conversation_id": conv, "ignore_eos": True},
    ) as stream:  # fmt: skip
        next(iter(stream))
        with pytest.raises(openai.ConflictError):
            chat_turn(client, TURN2, conversation_id=conv)
    for _ in range(100):  # the server notices the disconnect and releases the conversation
        try:
            r = chat_turn(client, TURN2, conversation_id=conv)
            break
        except openai.ConflictError:
            time.sleep(0.1)
    assert r.conversation_id == conv
    info = httpx.get(f"{server.base_url}/v1/conversations/{conv}", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert info["turns"] == 2  # the abandoned turn was not stored


# ---------------------------------------------------------------------------------------------- concurrency
def test_concurrent_streams_equal_each_alone_and_a_stalled_client_stalls_nobody(server, client, ref):
    # a client that requests a long stream and never reads it
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    stalled.connect(("127.0.0.1", server.port))
    body = json.dumps({"model": MODEL, "prompt": "zzz", "max_tokens": 2000, "stream": True}).encode()
    head = f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    stalled.sendall(head.encode() + body)
    try:
        prompts = [("a" * i) + "?" for i in (1, 7, 20, 40, 3, 11)]
        lengths = [5, 17, 9, 13, 20, 3]
        aclient = openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0, timeout=60)

        async def one(p, n):
            s = await aclient.completions.create(model=MODEL, prompt=p, max_tokens=n, temperature=0, stream=True)
            return "".join([c.choices[0].text async for c in s if c.choices])

        async def all_():
            return await asyncio.gather(*(one(p, n) for p, n in zip(prompts, lengths)))

        t0 = time.perf_counter()
        got = asyncio.run(all_())
        elapsed = time.perf_counter() - t0
        assert got == [ref.completion(p, n) for p, n in zip(prompts, lengths)]
        assert elapsed < 30
        # the engine finishes the stalled stream without waiting for its reader; the reply waits in the server
        for _ in range(300):
            if httpx.get(server.base_url + "/health", headers=AUTH).json()["engine"]["decoding"] == 0:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the stalled stream never finished decoding")
        received = b""
        stalled.settimeout(30)
        while b"data: [DONE]" not in received:
            chunk = stalled.recv(1 << 16)
            assert chunk, "connection closed before [DONE]"
            received += chunk
        assert received.startswith(b"HTTP/1.1 200") and b'"finish_reason": "' in received
    finally:
        stalled.close()


# ---------------------------------------------------------------------------------------------- auth and errors
def test_auth(server):
    c = openai.OpenAI(base_url=server.base_url + "/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        c.models.list()
    with pytest.raises(openai.AuthenticationError):
        c.completions.create(model=MODEL, prompt="x", max_tokens=1)
    for key in (None, "wrong-key", KEY + "x"):  # no header, wrong key, right key with a suffix
        err = assert_openai_error(post(server, "/v1/completions", {"model": MODEL, "prompt": "x"}, key=key), 401)
        assert err["code"] == "invalid_api_key"
    resp = httpx.get(server.base_url + "/v1/models", headers={"Authorization": f"Basic {KEY}"})
    assert_openai_error(resp, 401)
    assert httpx.get(server.base_url + "/health").status_code == 200


def _chat(**kw):
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **kw}


def _cmpl(**kw):
    return {"model": MODEL, "prompt": "hi", **kw}


INVALID = {
    "unknown model": ("/v1/completions", {"model": "gpt-9", "prompt": "x"}, 404),
    "missing model": ("/v1/completions", {"prompt": "x"}, 400),
    "missing prompt": ("/v1/completions", {"model": MODEL}, 400),
    "empty prompt": ("/v1/completions", _cmpl(prompt=""), 400),
    "prompt too long": ("/v1/completions", _cmpl(prompt="x" * 301), 400),
    "token id out of range": ("/v1/completions", _cmpl(prompt=[1, 2, 99999]), 400),
    "two prompts": ("/v1/completions", _cmpl(prompt=["a", "b"]), 400),
    "max_tokens above limit": ("/v1/completions", _cmpl(max_tokens=20001), 400),
    "max_tokens zero": ("/v1/completions", _cmpl(max_tokens=0), 400),
    "max_tokens as string": ("/v1/completions", _cmpl(max_tokens="5"), 400),
    "temperature too high": ("/v1/chat/completions", _chat(temperature=3), 400),
    "top_p zero": ("/v1/chat/completions", _chat(top_p=0), 400),
    "n = 2": ("/v1/chat/completions", _chat(n=2), 400),
    "five stop strings": ("/v1/chat/completions", _chat(stop=["a", "b", "c", "d", "e"]), 400),
    "penalty unsupported": ("/v1/chat/completions", _chat(presence_penalty=0.5), 400),
    "logprobs unsupported": ("/v1/completions", _cmpl(logprobs=2), 400),
    "echo unsupported": ("/v1/completions", _cmpl(echo=True), 400),
    "unknown field": ("/v1/chat/completions", _chat(frobnicate=1), 400),
    "no messages": ("/v1/chat/completions", _chat(messages=[]), 400),
    "bad role": ("/v1/chat/completions", _chat(messages=[{"role": "tool", "content": "x"}]), 400),
    "bad content part": (
        "/v1/chat/completions",
        _chat(messages=[{"role": "user", "content": [{"type": "image"}]}]),
        400,
    ),
    "messages too long": ("/v1/chat/completions", _chat(messages=[{"role": "user", "content": "y" * 300}]), 400),
    "unknown conversation": ("/v1/chat/completions", _chat(conversation_id="conv_000000000000000000000000"), 404),
    "store false with id": ("/v1/chat/completions", _chat(conversation_id="conv_x", store=False), 400),
    "body is a list": ("/v1/chat/completions", [1, 2], 400),
    "seed too large": ("/v1/completions", _cmpl(seed=2**70), 400),
    "content not text": ("/v1/chat/completions", _chat(messages=[{"role": "user", "content": 5}]), 400),
    "bool token id": ("/v1/completions", _cmpl(prompt=[True, 1]), 400),
    "empty stop string": ("/v1/completions", _cmpl(stop=""), 400),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_request_is_an_openai_4xx(server, case):
    path, body, status = INVALID[case]
    assert_openai_error(post(server, path, body), status)


def test_invalid_transport_level_requests(server):
    assert_openai_error(
        post(server, "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}), 400
    )
    assert_openai_error(
        post(server, "/v1/completions", content=b'{"model": 1}', headers={"content-type": "text/plain"}), 400
    )
    assert_openai_error(post(server, "/v1/completions", _cmpl(prompt="z" * 30000)), 413)
    json_headers = {"content-type": "application/json"}
    lone_surrogate = b'{"model": "%s", "prompt": "\\ud800 x"}' % MODEL.encode()
    assert_openai_error(post(server, "/v1/completions", content=lone_surrogate, headers=json_headers), 400)
    nan = b'{"model": "%s", "prompt": "x", "temperature": NaN}' % MODEL.encode()
    assert_openai_error(post(server, "/v1/completions", content=nan, headers=json_headers), 400)
    assert_openai_error(post(server, "/v1/completions", content=b"", headers=json_headers), 400)
    assert_openai_error(
        httpx.get(server.base_url + "/v1/nothing-here", headers={"Authorization": f"Bearer {KEY}"}), 404
    )
    assert_openai_error(httpx.put(server.base_url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"}), 405)
    conv = post(server, "/v1/conversations", {"kind": "completion"}).json()["id"]
    err = assert_openai_error(post(server, "/v1/chat/completions", _chat(conversation_id=conv)), 400)
    assert err["code"] == "conversation_kind_mismatch"


def test_openai_client_raises_typed_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model=MODEL, prompt="x", max_tokens=50000)
    with pytest.raises(openai.NotFoundError, match="not found"):
        chat_turn(client, TURN2, conversation_id="conv_unknown")
    assert client.models.list().data  # the server is still healthy


# ---------------------------------------------------------------------------------------------- restart (last)
def test_restart_in_the_middle_of_a_conversation(server, ref):
    c = openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    first = chat_turn(c, TURN1, store=True)
    count = httpx.get(server.base_url + "/health", headers=AUTH).json()["store"]["conversations"]
    server.stop()
    server.start()
    c = openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    assert httpx.get(server.base_url + "/health", headers=AUTH).json()["store"]["conversations"] == count
    second = chat_turn(c, TURN2, conversation_id=first.conversation_id)
    assert [first.choices[0].message.content, second.choices[0].message.content] == ref.chat([TURN1, TURN2], 12)
