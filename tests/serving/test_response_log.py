"""The response log's promises, held by both implementations: SQLite under --data-dir and a real Redis server."""

from __future__ import annotations

import pytest
import redis

from retnet.serving.response_log import Prompt, ResponseRecord
from retnet.serving.response_log_redis import RedisResponseLog
from retnet.serving.response_log_sqlite import SQLiteResponseLog
from retnet.serving.store import StoreUnavailable


@pytest.fixture(params=["sqlite", "redis"])
def opener(request, tmp_path):
    """``open()``: a log of the parametrized kind; every call opens the same storage again (another process's
    view)."""
    opened = []

    def open_log():
        if request.param == "sqlite":
            log = SQLiteResponseLog(tmp_path)
        else:
            log = RedisResponseLog(redis.Redis.from_url(request.getfixturevalue("redis_url")), "test")
        opened.append(log)
        return log

    yield open_log
    for log in opened:
        log.close()


def record(n: int, root: int | None = None, created: float | None = None, prompt: str | None = None) -> ResponseRecord:
    rid = f"resp_{n:024x}"
    p = Prompt(prompt, f"conv_p{n}", 10 + n, b"\x00logits\xff" * n) if prompt else None
    root_id = f"resp_{root:024x}" if root is not None else rid
    prev = None if root is None else f"resp_{n - 1:024x}"
    body = {"id": rid, "output": [{"text": f"answer {n}"}]}
    items = [{"id": f"msg_{n}", "role": "user", "content": "é\u2603"}]
    return ResponseRecord(rid, f"conv_{n}", prev, root_id, 1000.0 + n if created is None else created, body, items, p)


def test_records_round_trip_across_openers(opener):
    a, b = opener(), opener()
    rec = record(1, prompt="k1")
    a.add(rec)
    a.add(record(2, root=1))
    assert b.get(rec.id) == rec  # another process reads what this one wrote, logits bytes included
    assert b.get(record(2, root=1).id).prompt is None and b.get("resp_" + "f" * 24) is None
    assert b.prompt("k1") == rec.prompt and b.prompt("other") is None
    assert b.prompt_users("conv_p1") == 1
    b.delete(rec.id)
    b.delete(rec.id)  # unknown: nothing happens
    assert a.get(rec.id) is None and a.prompt("k1") is None and a.prompt_users("conv_p1") == 0


def test_prompt_is_the_newest_with_its_key_and_users_are_counted(opener):
    log = opener()
    old, new = record(1, prompt="k"), record(2, prompt="k")
    new.prompt.conv_id = old.prompt.conv_id  # a regenerate shares its prompt state
    log.add(old)
    log.add(new)
    assert log.prompt("k") == new.prompt and log.prompt_users(old.prompt.conv_id) == 2
    log.delete(new.id)
    assert log.prompt("k") == old.prompt and log.prompt_users(old.prompt.conv_id) == 1


def test_listing_orders_pages_and_filters_like_sqlite(opener):
    log = opener()
    recs = [record(1), record(2, root=1), record(3, root=1), record(4), record(5, root=4)]
    recs += [record(6, created=1003.0), record(7, created=1003.0)]  # ties in time: ordered by id
    for rec in recs:
        log.add(rec)
    everything = sorted(recs, key=lambda r: (r.created, r.id))
    for order in ("asc", "desc"):
        want = [r.id for r in (everything if order == "asc" else everything[::-1])]
        got, after = [], None
        while True:  # pages of 2 walk through every record once, in order, ties included
            page, more = log.list(2, after=after, order=order)
            got += [r.id for r in page]
            if not more:
                break
            after = page[-1].id
        assert got == want
    page, more = log.list(10, roots_only=True, order="asc")
    assert [r.id for r in page] == [recs[0].id, recs[5].id, recs[6].id, recs[3].id] and not more
    page, more = log.list(1, root_id=recs[0].id, order="asc")
    assert [r.id for r in page] == [recs[0].id] and more
    page, _ = log.list(5, root_id=recs[0].id, order="desc", after=recs[2].id)
    assert [r.id for r in page] == [recs[1].id, recs[0].id]
    page, _ = log.list(5, root_id=recs[3].id, roots_only=True)
    assert [r.id for r in page] == [recs[3].id]
    assert log.list(5, root_id="resp_" + "e" * 24) == ([], False)
    with pytest.raises(LookupError):
        log.list(5, after="resp_" + "e" * 24)


def test_a_redis_server_that_cannot_be_reached_is_store_unavailable():
    log = RedisResponseLog(redis.Redis(port=1, socket_connect_timeout=1), "redis://127.0.0.1:1/0")
    with pytest.raises(StoreUnavailable, match="redis://127.0.0.1:1/0"):
        log.get("resp_" + "0" * 24)
