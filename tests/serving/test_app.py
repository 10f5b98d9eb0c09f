"""The app in-process (no sockets): expiry and eviction seen through the API, and refused data folders."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from retnet.serving.app import create_app
from retnet.serving.config import ServerConfig
from retnet.serving.store import StoreError
from tests.serving.helpers import make_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("m") / "m")


def chat(client, **extra):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, **extra}
    return client.post("/v1/chat/completions", json=body)


def test_expired_and_evicted_conversations_are_404(model_dir, tmp_path):
    cfg = ServerConfig(model_dir, data_dir=tmp_path / "d", threads=1, conversation_ttl_s=1.0, max_conversations=2)
    with TestClient(create_app(cfg)) as client:
        first = chat(client, store=True).json()["conversation_id"]
        time.sleep(1.2)
        r = chat(client, conversation_id=first)
        assert r.status_code == 404 and "expired" in r.json()["error"]["message"]
        ids = [chat(client, store=True).json()["conversation_id"] for _ in range(3)]
        r = chat(client, conversation_id=ids[0])
        assert r.status_code == 404 and "lru" in r.json()["error"]["message"]
        assert chat(client, conversation_id=ids[2]).status_code == 200
        store = client.get("/health").json()["store"]
        assert store["conversations"] == 2 and store["evicted"] == {"lru": 1, "expired": 1}
        r = client.delete(f"/v1/conversations/{ids[2]}")
        assert r.json()["deleted"] is True and client.get(f"/v1/conversations/{ids[2]}").status_code == 404


def test_data_folder_of_another_model_or_dtype_is_refused(model_dir, tmp_path):
    with TestClient(create_app(ServerConfig(model_dir, data_dir=tmp_path / "d", threads=1))):
        pass
    with pytest.raises(StoreError, match="different model"):
        create_app(ServerConfig(model_dir, data_dir=tmp_path / "d", threads=1, dtype="float64"))
    other = make_model_dir(tmp_path / "other", seed=1)
    with pytest.raises(StoreError, match="different model"):
        create_app(ServerConfig(other, data_dir=tmp_path / "d", threads=1))


def test_tokenizer_larger_than_the_model_is_refused(tmp_path):
    from retnet.models import RetNetConfig, RetNetForCausalLM
    from retnet.serving.random_model import byte_tokenizer

    RetNetForCausalLM(RetNetConfig(vocab_size=100, hidden_size=16, num_layers=1, num_heads=2, value_dim=16,
                                   ffn_dim=16)).save_pretrained(tmp_path / "m")  # fmt: skip
    byte_tokenizer().save(str(tmp_path / "m" / "tokenizer.json"))
    with pytest.raises(ValueError, match="vocab_size"):
        create_app(ServerConfig(tmp_path / "m", threads=1))


def _live(*types) -> int:
    import gc

    return sum(isinstance(o, types) for o in gc.get_objects())


def _live_soon(*types, expected: int, within_s: float = 5.0) -> int:
    """The live count once it reaches ``expected``, or the last count after ``within_s``. The engine thread
    may still be returning from the ``emit`` call that delivered the last event (its frame holds the
    sequence and the ``Finished``) when the response is already complete; on a busy machine it can be
    descheduled right there. A leak never reaches ``expected``; that race does within milliseconds."""
    deadline = time.monotonic() + within_s
    while (n := _live(*types)) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return n


def test_finished_requests_are_freed_without_the_cyclic_collector(model_dir, tmp_path):
    """A finished request must not sit in a reference cycle: each holds a state, and under load the cyclic
    collector ran too rarely to keep RSS flat. With it off, nothing of a finished request may remain."""
    import gc

    from retnet.generation import Finished, Sequence
    from retnet.serving.routes import Turn

    with TestClient(create_app(ServerConfig(model_dir, data_dir=tmp_path / "d", threads=1))) as client:
        conv = chat(client, store=True).json()["conversation_id"]
        gc.collect()
        gc.disable()
        try:
            before = _live(Sequence, Turn, Finished)
            for i in range(6):
                assert chat(client, conversation_id=conv, stream=i % 2 == 0).status_code == 200
                assert chat(client, stream=i % 2 == 1).status_code == 200  # no conversation
            assert _live_soon(Sequence, Turn, Finished, expected=before) == before
            # A client that leaves mid-stream: the cancellation's traceback may keep the small Turn record
            # until the collector runs, but the engine sequence (and the state it holds) must go at once.
            body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
            body["conversation_id"] = conv
            with client.stream("POST", "/v1/chat/completions", json=body) as r:
                next(r.iter_lines())
            assert chat(client, conversation_id=conv).status_code == 200  # released (not 409); engine stepped
            assert _live_soon(Sequence, Finished, expected=0) == 0
        finally:
            gc.enable()
