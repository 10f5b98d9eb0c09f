"""The Responses API (``/v1/responses``) of a real ``retnet serve`` process, driven by the official ``openai``
client: create, continue, fork from any earlier response, stream, retrieve, delete, and the errors.

The server runs in float64, so greedy replies equal a one-pass in-process reference token for token; the
engine's prefill counter (``/health``) shows that a fork processes only its new tokens.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.serving.helpers import ServerProcess, make_model_dir
from tests.serving.test_server import Reference

KEY = "sk-resp-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "tiny-retnet"
N = 8  # max_output_tokens of every reply here
pytestmark = pytest.mark.slow  # one server start and ~40 short replies: ~20-40 s on 2 cores


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("served") / MODEL)


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    data = tmp_path_factory.mktemp("data") / "conversations"
    args = ["--dtype", "float64", "--max-prompt-tokens", "300", "--max-tokens", "64"]
    with ServerProcess(model_dir, data, *args, api_key=KEY) as proc:
        yield proc


@pytest.fixture(scope="module")
def ref(model_dir):
    return Reference(model_dir)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def prefilled(server) -> int:
    """Prompt tokens the engine has processed so far."""
    return httpx.get(server.base_url + "/health", headers=AUTH).json()["engine"]["tokens_prefilled"]


def ask(client, text, previous=None, **kw):
    kw = {"temperature": 0, **kw}
    return client.responses.create(model=MODEL, input=text, previous_response_id=previous, max_output_tokens=N, **kw)


def user(text: str) -> list[tuple[str, str]]:
    return [("user", text)]


def new_tokens(ref, previous, text: str) -> int:
    """Tokens a continuation must process: the previous reply's pending tokens, then the new turn."""
    pending = 0
    if previous is not None:
        pending = 1 + (len(ref.tok.encode(ref.tpl.end_of_turn)) if previous.status == "incomplete" else 0)
    return pending + len(ref.tok.encode(ref.tpl.render(user(text))))


# ---------------------------------------------------------------------------------------------- basics
def test_create_continue_retrieve_input_items_and_delete(server, client, ref):
    first = ask(client, "Hello there")
    assert first.id.startswith("resp_") and first.object == "response" and first.status in ("completed", "incomplete")
    assert first.output_text == ref.chat([user("Hello there")], N)[0]
    assert first.previous_response_id is None and first.store is True
    assert first.usage.input_tokens == len(ref.tok.encode(ref.tpl.render(user("Hello there"))))
    assert first.usage.input_tokens_details.cached_tokens == 0

    second = ask(client, [{"role": "user", "content": [{"type": "input_text", "text": "More"}]}], first.id)
    assert second.output_text == ref.chat([user("Hello there"), user("More")], N)[1]
    assert second.previous_response_id == first.id
    processed = second.usage.input_tokens - second.usage.input_tokens_details.cached_tokens
    assert processed == new_tokens(ref, first, "More")
    assert second.usage.input_tokens_details.cached_tokens == first.usage.total_tokens - 1  # all but its last token

    got = client.responses.retrieve(second.id)
    assert (got.id, got.output_text, got.previous_response_id, got.usage) == (
        second.id, second.output_text, first.id, second.usage,
    )  # fmt: skip
    items = client.responses.input_items.list(second.id)
    assert [(i.role, i.content[0].text) for i in items.data] == [("user", "More")]

    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError) as exc:
        ask(client, "again", first.id)
    assert exc.value.body["param"] == "previous_response_id"
    # the second response owns its state: it continues although its parent is gone
    third = ask(client, "Go on", second.id)
    assert third.output_text == ref.chat([user("Hello there"), user("More"), user("Go on")], N)[2]


def test_fork_from_turn_3_of_10_equals_a_replay_and_processes_only_new_tokens(server, client, ref):
    turns = [f"Turn {i}: say something about the number {i}." for i in range(1, 11)]
    chain, prev = [], None
    for text in turns:
        prev = ask(client, text, prev.id if prev else None)
        chain.append(prev)
    assert [r.output_text for r in chain] == ref.chat([user(t) for t in turns], N)

    # a new message after turn 3: equal to replaying turns 1-3 and the new message from scratch
    before = prefilled(server)
    fork = ask(client, "Something else entirely", chain[2].id)
    assert prefilled(server) - before == new_tokens(ref, chain[2], "Something else entirely")
    want = ref.chat([user(t) for t in turns[:3]] + [user("Something else entirely")], N)[-1]
    assert fork.output_text == want
    assert fork.usage.input_tokens_details.cached_tokens == chain[2].usage.total_tokens - 1
    assert fork.usage.input_tokens - fork.usage.input_tokens_details.cached_tokens == prefilled(server) - before

    # regenerate turn 4 (continue turn 3 with turn 4's input): sampled from the stored state and logits after
    # turn 4's prompt, so not even the new input is processed again
    before = prefilled(server)
    again = ask(client, turns[3], chain[2].id)
    assert again.output_text == chain[3].output_text
    assert prefilled(server) - before == 0
    assert again.usage.input_tokens == again.usage.input_tokens_details.cached_tokens == chain[3].usage.input_tokens

    # a second continuation of the fork and of the untouched original branch
    deeper = ask(client, "And then?", fork.id)
    assert deeper.output_text == ref.chat([user(t) for t in turns[:3]] + [user("Something else entirely"),
                                                                         user("And then?")], N)[-1]  # fmt: skip
    eleventh = ask(client, "Turn 11.", chain[-1].id)
    assert eleventh.output_text == ref.chat([user(t) for t in turns] + [user("Turn 11.")], N)[-1]


def test_regenerate_samples_from_the_stored_logits_like_the_original(server, client):
    """A seeded regenerate equals the seeded original (sampling from stored logits is sampling after the prompt);
    with its prompt state gone, a regenerate processes the new input again and still gives the same reply."""
    base = ask(client, "Regenerate base")
    first = ask(client, "Pick something", base.id, temperature=1.0, extra_body={"seed": 7})
    before = prefilled(server)
    again = ask(client, "Pick something", base.id, temperature=1.0, extra_body={"seed": 7})
    assert prefilled(server) == before and again.output_text == first.output_text
    seeded = {"temperature": 1.0, "extra_body": {"seed": 7}}
    stream = client.responses.create(
        model=MODEL, input="Pick something", previous_response_id=base.id, max_output_tokens=N, stream=True, **seeded
    )
    assert list(stream)[-1].response.output_text == first.output_text and prefilled(server) == before

    convs = httpx.get(server.base_url + "/v1/conversations", params={"limit": 100}, headers=AUTH).json()["data"]
    for conv in convs:
        if conv["kind"] == "prompt":
            assert httpx.delete(f"{server.base_url}/v1/conversations/{conv['id']}", headers=AUTH).status_code == 200
    before = prefilled(server)
    third = ask(client, "Pick something", base.id, temperature=1.0, extra_body={"seed": 7})
    assert third.output_text == first.output_text
    assert prefilled(server) - before == third.usage.input_tokens - third.usage.input_tokens_details.cached_tokens > 0


def test_streaming_events_follow_the_responses_schema(server, client, ref):
    want = ref.chat([user("Stream me")], N)[0]
    events = list(client.responses.create(model=MODEL, input="Stream me", max_output_tokens=N, temperature=0,
                                          stream=True))  # fmt: skip
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
    ]  # fmt: skip
    final_type = "response.incomplete" if events[-1].response.status == "incomplete" else "response.completed"
    assert types[-4:] == [
        "response.output_text.done", "response.content_part.done", "response.output_item.done", final_type,
    ]  # fmt: skip
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert deltas == events[-4].text == final.output_text == want
    assert events[0].response.status == "in_progress" and events[0].response.id == final.id
    assert client.responses.retrieve(final.id).output_text == want

    # the client's stream helper rebuilds the response from the events, checking their order and identities
    with client.responses.stream(model=MODEL, input="Stream more", previous_response_id=final.id,
                                 max_output_tokens=N, temperature=0) as stream:  # fmt: skip
        seen = list(stream)
    snapshots = [e.snapshot for e in seen if e.type == "response.output_text.delta"]
    want = ref.chat([user("Stream me"), user("Stream more")], N)[1]
    assert snapshots[-1] == seen[-1].response.output_text == want  # the helper's running text, the final object
    assert seen[-1].type in ("response.completed", "response.incomplete")


def test_instructions_are_a_system_message_of_this_turn(client, ref):
    r = ask(client, "Hi", instructions="Answer briefly.")
    assert r.instructions == "Answer briefly."
    assert r.output_text == ref.chat([[("system", "Answer briefly."), ("user", "Hi")]], N)[0]


def test_store_false_answers_but_keeps_nothing(server, client, ref):
    base = ask(client, "Keep this")
    loose = ask(client, "Do not keep", base.id, store=False)
    assert loose.store is False
    assert loose.output_text == ref.chat([user("Keep this"), user("Do not keep")], N)[1]
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(loose.id)
    with pytest.raises(openai.NotFoundError) as exc:
        ask(client, "next", loose.id)
    assert exc.value.body["param"] == "previous_response_id"


def test_listing_extension_groups_responses_by_conversation(server, client):
    root = ask(client, "List root")
    a, b = ask(client, "branch a", root.id), ask(client, "branch b", root.id)
    tree = httpx.get(server.base_url + "/v1/responses", params={"root_id": root.id, "order": "asc"}, headers=AUTH)
    assert [r["id"] for r in tree.json()["data"]] == [root.id, a.id, b.id]
    assert {r["root_id"] for r in tree.json()["data"]} == {root.id}
    assert tree.json()["data"][1]["input"][0]["content"][0]["text"] == "branch a"
    roots = httpx.get(server.base_url + "/v1/responses", params={"roots": "true", "limit": 100}, headers=AUTH).json()
    ids = [r["id"] for r in roots["data"]]
    assert root.id in ids and a.id not in ids and b.id not in ids
    # the states are conversations of kind "response": the chat route does not continue (and so change) them
    convs = httpx.get(server.base_url + "/v1/conversations", params={"limit": 100}, headers=AUTH).json()["data"]
    conv = next(c for c in convs if c["kind"] == "response")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "conversation_id": conv["id"]}
    resp = httpx.post(server.base_url + "/v1/chat/completions", json=body, headers=AUTH)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "conversation_id"


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("previous", ["resp_" + "0" * 24, "resp_nope", "x" * 128], ids=["unknown", "malformed", "long"])
def test_unknown_previous_response_is_a_404_naming_the_field(client, previous):
    with pytest.raises(openai.NotFoundError) as exc:
        ask(client, "Hi", previous)
    assert exc.value.body["param"] == "previous_response_id" and previous[:20] in exc.value.body["message"]


BAD = [
    ({"input": 5}, "input"),
    ({"input": []}, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]}, "input[0].content"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
    ({"input": "x", "max_output_tokens": 65}, "max_output_tokens"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "x", "temperature": 3}, "temperature"),
    ({"input": "x", "tools": [{"type": "function", "name": "f"}]}, "tools"),
    ({"input": "x", "frobnicate": 1}, "frobnicate"),
    ({"input": "x", "store": "yes"}, "store"),
    ({"input": "x" * 400}, "input"),
]


@pytest.mark.parametrize("body, param", BAD, ids=[p for _, p in BAD])
def test_bad_input_is_a_400_naming_the_field(server, body, param):
    resp = httpx.post(server.base_url + "/v1/responses", json={"model": MODEL, **body}, headers=AUTH, timeout=60)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["param"] is not None and err["param"].startswith(param), err
    assert err["type"] == "invalid_request_error"


def test_unknown_model_and_unknown_ids(server, client):
    with pytest.raises(openai.NotFoundError) as exc:
        client.responses.create(model="nope", input="x")
    assert exc.value.body["param"] == "model"
    for call in (client.responses.retrieve, client.responses.delete, client.responses.input_items.list):
        with pytest.raises(openai.NotFoundError) as exc:
            call("resp_" + "1" * 24)
        assert exc.value.body["param"] == "response_id"
    resp = httpx.get(server.base_url + "/v1/responses", params={"after": "resp_" + "2" * 24}, headers=AUTH)
    assert resp.status_code == 404 and resp.json()["error"]["param"] == "after"
    resp = httpx.get(server.base_url + "/v1/responses", params={"roots": "maybe"}, headers=AUTH)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "roots"
