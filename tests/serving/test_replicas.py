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
