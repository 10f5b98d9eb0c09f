"""Issue #20 as a careless or hostile user triggered it, against the app in-process: extreme sampling
parameters, damaged state files, a full store under concurrent requests, a fault inside the engine while
others stream, broken models, HEAD and the conversation listing, and a property test over every numeric field.
"""

from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from retnet.serving.app import ModelCheckError, create_app
from retnet.serving.config import ServerConfig
from tests.cli.helpers import run_cli, snapshot
from tests.serving.helpers import free_port, make_model_dir

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("m") / "m")


def config(model_dir, data_dir, **kw) -> ServerConfig:
    args = dict(data_dir=data_dir, threads=1, dtype="float64", max_tokens_limit=16, state_cache_bytes=0)
    return ServerConfig(model_dir, **{**args, **kw})


@pytest.fixture(scope="module")
def served(model_dir, tmp_path_factory):
    """One app for the module; a user's file sits in the store folder to prove nothing foreign is touched."""
    data = tmp_path_factory.mktemp("d") / "store"
    app = create_app(config(model_dir, data))
    (data / "README-mine.txt").write_text("mine")
    (data / "states" / "notes.txt").write_text("mine too")
    with TestClient(app) as client:
        client.data_dir = data
        yield client


def cmpl(client, prompt="ROMEO:", **kw):
    return client.post("/v1/completions", json={"model": "m", "prompt": prompt, "max_tokens": 4, **kw})


def greedy_text(client, prompt="ROMEO:", n=4) -> str:
    r = cmpl(client, prompt, max_tokens=n, temperature=0)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def health(client) -> dict:
    return client.get("/health").json()


def state_path(client, conv_id: str) -> Path:
    (path,) = (client.data_dir / "states").glob(f"{conv_id}.*.safetensors")
    return path


# ---------------------------------------------------------------------------------------------- issue 2
@pytest.mark.parametrize("kw", [{"temperature": 5e-324}, {"temperature": 1e-40}, {"top_p": 1e-300}])
def test_extreme_sampling_parameters_answer_and_release_the_conversation(served, kw):
    """Issue #20.2: these made NaN, the request never got an answer and its conversation stayed locked."""
    if "top_p" in kw:  # a top_p below float32's smallest number keeps only the most likely token: greedy
        kw = {**kw, "temperature": 1.0}
    r = cmpl(served, store=True, **kw)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == greedy_text(served)
    conv = r.json()["conversation_id"]
    assert health(served)["store"]["active_turns"] == 0
    assert cmpl(served, " more", conversation_id=conv, **kw).status_code == 200
    assert health(served)["engine"]["failed_requests"] == 0


def _poison_state_file(path: Path) -> None:
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    tensors = load_file(path)
    for t in tensors.values():
        if t.is_floating_point():
            t.fill_(float("nan"))
    save_file(tensors, path, metadata=meta)


@pytest.mark.parametrize("damage", ["nan", "truncated", "garbage", "symlink", "folder"])
def test_a_damaged_state_file_is_a_404_and_the_conversation_is_not_locked(served, damage, tmp_path):
    """Issue #20.2 (a NaN-filled state hung the request) and #20.5 (truncated, garbage or symlinked state files
    gave 500 with a traceback): each is a 404 naming the cause, and the conversation can still be deleted
    (leaving a folder or link put in its file's place alone)."""
    conv = cmpl(served, store=True).json()["conversation_id"]
    path = state_path(served, conv)
    data = path.read_bytes()
    if damage == "nan":
        _poison_state_file(path)
    elif damage == "truncated":
        path.write_bytes(data[:100])
    elif damage == "garbage":
        path.write_bytes(bytes(range(256)) * 4)
    elif damage == "folder":
        path.unlink()
        path.mkdir()
    else:
        (tmp_path / "elsewhere.safetensors").write_bytes(data)
        path.unlink()
        path.symlink_to(tmp_path / "elsewhere.safetensors")
    r = cmpl(served, " next", conversation_id=conv)
    assert r.status_code == 404, r.text
    err = r.json()["error"]
    assert err["code"] == "conversation_state_unreadable" and path.name in err["message"]
    assert health(served)["store"]["active_turns"] == 0
    assert served.delete(f"/v1/conversations/{conv}").status_code == 200
    if damage == "symlink":
        assert (tmp_path / "elsewhere.safetensors").read_bytes() == data
    if damage == "folder":
        assert path.is_dir()


def _broken_model_dir(model_dir: Path, tmp_path: Path, how: str) -> Path:
    out = make_model_dir(tmp_path / how)
    if how == "nan-weights":
        tensors = load_file(out / "model.safetensors")
        name = next(k for k in tensors if k.endswith("weight") and tensors[k].dim() == 2)
        tensors[name][0, 0] = float("nan")
        save_file(tensors, out / "model.safetensors")
    else:
        cfg = json.loads((out / "config.json").read_text())
        cfg.update({"embed_scale": float("nan")} if how == "nan-embed-scale" else {"rotary_base": 0})
        (out / "config.json").write_text(json.dumps(cfg))
    return out


@pytest.mark.parametrize("how", ["nan-weights", "nan-embed-scale", "rotary-base-0"])
def test_a_model_that_makes_non_finite_logits_is_refused_at_start(model_dir, tmp_path, capsys, how):
    """Issue #20.2: such models loaded, /health said ok, and every request hung. Now `retnet serve` stops with
    one line and exit code 2 (the finite-check probe, or the config check where it catches the value first)."""
    broken = _broken_model_dir(model_dir, tmp_path, how)
    data = tmp_path / "data"
    code, out, err = run_cli(capsys, "serve", broken, "--port", free_port(), "--data-dir", data, "--threads", "1")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not data.exists()  # refused before any store folder was made
    if how == "nan-weights":
        assert "non-finite" in err
        with pytest.raises(ModelCheckError, match="non-finite"):
            create_app(config(broken, tmp_path / "d2"))


def test_a_stopped_engine_answers_at_once_instead_of_hanging(model_dir, tmp_path):
    with TestClient(create_app(config(model_dir, tmp_path / "d"))) as client:
        client.app.state.engine.stop()
        r = cmpl(client, store=True)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_stopped"
        assert client.get("/health").status_code == 503 and health(client)["store"]["active_turns"] == 0


# ---------------------------------------------------------------------------------------------- issue 4
def test_concurrent_stored_requests_never_fail_or_overfill_a_one_conversation_store(model_dir, tmp_path):
    """Issue #20.4: with --max-conversations 1, concurrent `store: true` requests got HTTP 500
    (ConversationNotFound: created, then evicted by another before being locked) and the store overfilled."""
    with TestClient(create_app(config(model_dir, tmp_path / "d", max_conversations=1))) as client:
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda i: cmpl(client, f"p{i}", store=True).status_code, range(16)))
        assert set(codes) <= {200, 429} and 200 in codes, codes
        store = health(client)["store"]
        assert store["conversations"] <= 1 and store["active_turns"] == 0


# ---------------------------------------------------------------------------------------------- fault injection
def test_a_fault_inside_the_engine_fails_one_request_while_eight_stream_on(model_dir, tmp_path):
    """One request is made to fail inside the engine (its sampler raises at its third token) while 8 others
    stream in the same batch: it gets an error event, and the 8 finish with exactly the tokens each produces
    alone."""
    with TestClient(create_app(config(model_dir, tmp_path / "d", max_tokens_limit=24))) as client:
        prompts = [f"{'abcdefgh'[i]} {i * 'x'}!" for i in range(8)]
        alone = [greedy_text(client, p, 24) for p in prompts]
        engine = client.app.state.engine
        sample, admit = engine._sample, engine._admit

        def faulty_sample(act, logits):
            if act.seq.params.seed == 666 and len(act.seq.generated) == 2:
                raise RuntimeError("injected fault")
            return sample(act, logits)

        queued = []

        def admit_all_at_once():  # once: wait for all nine, so that they really share the decode batch
            deadline = time.monotonic() + 30
            while engine.inbox.qsize() < 9 and time.monotonic() < deadline:
                time.sleep(0.005)
            queued.append(engine.inbox.qsize())
            engine._admit = admit
            admit()

        engine._sample, engine._admit = faulty_sample, admit_all_at_once
        try:

            def stream(body) -> str:
                with client.stream("POST", "/v1/completions", json={"model": "m", "stream": True, **body}) as r:
                    assert r.status_code == 200
                    return "".join(line + "\n" for line in r.iter_lines())

            bodies = [{"prompt": p, "max_tokens": 24, "temperature": 0} for p in prompts]
            bodies.append({"prompt": "poison", "max_tokens": 24, "temperature": 1.0, "seed": 666})
            with ThreadPoolExecutor(9) as pool:
                got = list(pool.map(stream, bodies))
        finally:
            engine._sample, engine._admit = sample, admit
        assert queued == [9]
        for text, want in zip(got[:8], alone):
            chunks = [json.loads(x[6:]) for x in text.split("\n") if x.startswith("data: {")]
            assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == want
            assert "data: [DONE]" in text
        poisoned = [json.loads(x[6:]) for x in got[8].split("\n") if x.startswith("data: {")]
        assert poisoned[-1]["error"]["code"] == "engine_error" and "data: [DONE]" not in got[8]
        load = health(client)["engine"]
        assert load["failed_requests"] == 1 and load["errors"] == 0 and load["decoding"] == 0


# ---------------------------------------------------------------------------------------------- issue 8
def test_head_is_answered_wherever_get_is(served):
    """Issue #20.8: HEAD /health was 405."""
    conv = served.post("/v1/conversations", json={}).json()["id"]
    resp = served.post("/v1/responses", json={"model": "m", "input": "x", "max_output_tokens": 2}).json()["id"]
    gets = [r.path for r in served.app.routes if isinstance(r, APIRoute) and "GET" in r.methods]
    assert len(gets) >= 5
    ids = {"{model_id}": "m", "{conv_id}": conv, "{response_id}": resp, "{name}": "chat.js"}
    for path in gets:
        url = path
        for field, value in ids.items():
            url = url.replace(field, value)
        r = served.head(url)
        assert r.status_code == 200 and r.content == b"", path


def test_conversations_are_listed_with_pagination(served):
    """Issue #20.8: GET /v1/conversations was in the README but answered 405."""
    made = [served.post("/v1/conversations", json={"kind": "completion"}).json()["id"] for _ in range(3)]
    first = served.get("/v1/conversations", params={"limit": 2}).json()
    assert first["object"] == "list" and [c["id"] for c in first["data"]] == made[::-1][:2] and first["has_more"]
    rest = served.get("/v1/conversations", params={"limit": 1, "after": first["last_id"]}).json()
    assert [c["id"] for c in rest["data"]] == [made[0]]
    for bad in ({"limit": 0}, {"limit": 101}, {"limit": "x"}, {"order": "up"}, {"after": "x"}, {"page": 2}):
        r = served.get("/v1/conversations", params=bad)
        assert r.status_code == 400 and r.json()["error"]["param"] == next(iter(bad)), bad
    r = served.get("/v1/conversations", params={"after": "conv_" + "0" * 24})
    assert r.status_code == 404 and r.json()["error"]["param"] == "after"


def test_health_shows_counts_and_limits_only_to_key_holders(model_dir, tmp_path):
    """Issue #20.8: with --api-key, /health showed counts and limits to anyone."""
    with TestClient(create_app(config(model_dir, tmp_path / "d", api_key="sk-k"))) as client:
        public = client.get("/health").json()
        assert public == {"status": "ok", "auth": True}
        full = client.get("/health", headers={"Authorization": "Bearer sk-k"}).json()
        assert full["store"]["conversations"] == 0 and full["limits"]["max_tokens"] == 16


def test_the_readme_routes_table_matches_the_app(served):
    """Issue #20.8: the README listed a route the app did not have."""
    section = README.read_text().split("## Serving", 1)[1].split("\n## ", 1)[0]
    documented = set()
    for methods, path in re.findall(r"^\| ((?:`[A-Z]+`,? ?)+) \| `(/[^`]*)` \|", section, flags=re.M):
        documented |= {(m, path) for m in re.findall(r"`([A-Z]+)`", methods)}
    served_routes = {(m, r.path) for r in served.app.routes if isinstance(r, APIRoute) for m in r.methods}
    assert documented == served_routes


# ---------------------------------------------------------------------------------------------- property test
NUMBERS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.integers(-3, 40),
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True),
    st.floats(min_value=0.0, max_value=2.0, allow_subnormal=True),
    st.sampled_from([0, 1, 5e-324, 1e-300, 1e-40, 1e-7, 0.999999, 1.0, 2.0, 2.0000001, 2**63, -(2**63)]),
)
FIELDS = ["max_tokens", "temperature", "top_p", "top_k", "seed", "n", "presence_penalty", "frequency_penalty"]


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    chat=st.booleans(),
    fields=st.dictionaries(st.sampled_from([*FIELDS, "best_of", "max_completion_tokens"]), NUMBERS, max_size=4),
    token_ids=st.one_of(st.none(), st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=3)),
    store=st.booleans(),
)
def test_any_numeric_field_is_answered_quickly_and_harms_nobody(served, chat, fields, token_ids, store):
    """Every numeric request field, any value JSON can carry (NaN and infinities included): a 200 or a 4xx
    naming the field, within a bounded time, while a greedy request beside it gets exactly its usual reply;
    no engine failure, no locked conversation, and the user's files in the store folder untouched."""
    reference = _reference(served)
    body: dict = {"model": "m", **fields, "store": store}
    if chat:
        body["messages"] = [{"role": "user", "content": "hi"}]
    else:
        body["prompt"] = token_ids if token_ids is not None else "ROMEO:"
    raw = json.dumps(body, allow_nan=True)  # NaN and Infinity as JSON's extensions write them
    path = "/v1/chat/completions" if chat else "/v1/completions"

    def fuzzed():
        return served.post(path, content=raw, headers={"content-type": "application/json"})

    t0 = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        f, g = pool.submit(fuzzed), pool.submit(lambda: cmpl(served, "ROMEO:", max_tokens=8, temperature=0))
        r, ref = f.result(timeout=60), g.result(timeout=60)
    assert time.monotonic() - t0 < 30
    assert r.status_code in (200, 400), (raw, r.status_code, r.text)
    if r.status_code != 200:
        err = r.json()["error"]
        assert err["message"] and (err["param"] is None or isinstance(err["param"], str))
    assert ref.status_code == 200 and ref.json()["choices"][0]["text"] == reference
    h = health(served)
    assert h["engine"]["failed_requests"] == 0 and h["engine"]["errors"] == 0 and h["store"]["active_turns"] == 0
    assert (served.data_dir / "README-mine.txt").read_text() == "mine"
    assert (served.data_dir / "states" / "notes.txt").read_text() == "mine too"


_REFERENCE: dict[int, str] = {}
_LOCK = threading.Lock()


def _reference(client) -> str:
    with _LOCK:
        if id(client) not in _REFERENCE:
            _REFERENCE[id(client)] = greedy_text(client, "ROMEO:", 8)
        return _REFERENCE[id(client)]


def test_the_store_folder_holds_only_our_files_and_the_users(served):
    names = {p.name for p in served.data_dir.iterdir()} - {f"{db}.sqlite-{x}" for db in ("index", "responses")
                                                            for x in ("wal", "shm")}  # fmt: skip
    assert names == {"retnet-store.json", "index.sqlite", "responses.sqlite", "states", "README-mine.txt"}
    assert "states/notes.txt" in snapshot(served.data_dir)
