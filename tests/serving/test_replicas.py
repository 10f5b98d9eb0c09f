"""Two ``retnet serve`` processes on one Redis server: any replica continues any conversation token for token,
and a replica killed mid-turn loses no stored turn."""

from __future__ import annotations

import json
import signal
import time

import httpx
import pytest

from tests.serving.helpers import ServerProcess, make_model_dir

pytestmark = pytest.mark.slow  # three server starts on 2 cores

TURNS = [
    [("system", "You are terse."), ("user", "Hello there")],
    [("user", "And then?")],
    [("user", "Tell me more, please")],
]
LAST = [("user", "One more thing")]


def chat(url: str, messages, conv: str | None, max_tokens: int = 10) -> dict:
    body = {"model": "m", "messages": [{"role": r, "content": c} for r, c in messages], "max_tokens": max_tokens}
    body |= {"temperature": 0, **({"conversation_id": conv} if conv else {"store": True})}
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def reply(body: dict) -> tuple[str, int]:
    return body["choices"][0]["message"]["content"], body["usage"]["completion_tokens"]


def test_replicas_share_conversations_and_a_killed_replica_loses_no_turn(tmp_path, redis_url):
    model_dir = make_model_dir(tmp_path / "m")
    args = ["--model-name", "m", "--dtype", "float64", "--store", redis_url, "--redis-lock-ttl", "1.5"]
    args += ["--max-tokens", "4000"]
    with ServerProcess(model_dir, tmp_path / "a", *args) as a, ServerProcess(model_dir, tmp_path / "b", *args) as b:
        # the reference: one process does every turn
        conv, want = None, []
        for messages in TURNS + [LAST]:
            body = chat(a.base_url, messages, conv)
            conv = body["conversation_id"]
            want.append(reply(body))
        # the same conversation alternating between the replicas
        conv, got = None, []
        for k, messages in enumerate(TURNS):
            body = chat((a, b)[k % 2].base_url, messages, conv)
            conv = body["conversation_id"]
            got.append(reply(body))
        assert got == want[: len(TURNS)]
        assert httpx.get(f"{b.base_url}/v1/conversations/{conv}").json()["turns"] == len(TURNS)

        # replica b dies (SIGKILL) while streaming the next turn of that conversation
        body = {"model": "m", "messages": [{"role": "user", "content": "Go on and on"}], "max_tokens": 4000}
        body |= {"temperature": 0, "stream": True, "conversation_id": conv, "stop": ["never-generated-stop"]}
        with httpx.stream("POST", b.base_url + "/v1/chat/completions", json=body, timeout=60) as stream:
            chunks = 0
            for line in stream.iter_lines():
                if line.startswith("data: {") and json.loads(line[6:])["choices"]:
                    chunks += 1
                if chunks >= 3:
                    b.proc.send_signal(signal.SIGKILL)
                    break
        b.proc.wait(timeout=30)
        assert chunks >= 3
        assert httpx.get(f"{a.base_url}/v1/conversations/{conv}").json()["turns"] == len(TURNS)
        # its lock expires; the stored turns are intact and the conversation continues on a, token for token
        deadline = time.monotonic() + 30
        while True:
            r = httpx.post(
                a.base_url + "/v1/chat/completions",
                json={"model": "m", "messages": [{"role": r_, "content": c} for r_, c in LAST], "max_tokens": 10,
                      "temperature": 0, "conversation_id": conv},
                timeout=120,
            )  # fmt: skip
            if r.status_code != 409 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 200, r.text
        assert reply(r.json()) == want[-1]
        info = httpx.get(f"{a.base_url}/v1/conversations/{conv}").json()
        assert info["turns"] == len(TURNS) + 1


def respond(url: str, text: str, previous: str | None = None) -> dict:
    body = {"model": "m", "input": text, "max_output_tokens": 10, "temperature": 0}
    if previous is not None:
        body["previous_response_id"] = previous
    r = httpx.post(url + "/v1/responses", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def said(body: dict) -> tuple[str, int, int]:
    return body["output"][0]["content"][0]["text"], body["usage"]["input_tokens"], body["usage"]["output_tokens"]


def prefilled(url: str) -> int:
    return httpx.get(url + "/health").json()["engine"]["tokens_prefilled"]


def test_replicas_continue_and_fork_each_others_responses(tmp_path, redis_url):
    """Responses live in Redis too: one created on a is continued and forked on b (and back), token for token
    as one process doing everything; a regenerate on a of a response made on b needs no forward pass."""
    model_dir = make_model_dir(tmp_path / "m")
    args = ["--model-name", "m", "--dtype", "float64", "--store", redis_url]
    with ServerProcess(model_dir, tmp_path / "a", *args) as a, ServerProcess(model_dir, tmp_path / "b", *args) as b:
        first = respond(a.base_url, "Hello there")
        second = respond(a.base_url, "And then?", first["id"])
        want = [said(first), said(second), said(respond(a.base_url, "Tell me more", second["id"]))]
        want_fork = said(respond(a.base_url, "Something else", first["id"]))

        one = respond(a.base_url, "Hello there")
        two = respond(b.base_url, "And then?", one["id"])  # created on a, continued on b
        three = respond(a.base_url, "Tell me more", two["id"])  # and back on a
        fork = respond(b.base_url, "Something else", one["id"])  # a fork on b from a's first response
        assert [said(one), said(two), said(three)] == want and said(fork) == want_fork
        assert two["usage"]["input_tokens_details"]["cached_tokens"] > 0  # b read a's stored state

        before = prefilled(a.base_url)
        again = respond(a.base_url, "And then?", one["id"])  # regenerate b's `two` on a: stored logits, no pass
        assert said(again) == said(two) and prefilled(a.base_url) == before

        # either replica lists, reads and deletes the other's responses
        tree = httpx.get(f"{b.base_url}/v1/responses", params={"root_id": one["id"], "order": "asc"}).json()
        assert [r["id"] for r in tree["data"]] == [one["id"], two["id"], three["id"], fork["id"], again["id"]]
        assert httpx.get(f"{a.base_url}/v1/responses/{fork['id']}").json()["output"] == fork["output"]
        assert httpx.delete(f"{a.base_url}/v1/responses/{fork['id']}").status_code == 200
        assert httpx.get(f"{b.base_url}/v1/responses/{fork['id']}").status_code == 404
        assert not (tmp_path / "a" / "responses.sqlite").exists()  # nothing of it stays local to a replica
