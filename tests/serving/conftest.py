"""Fixtures of the serving tests: a real Redis server (one per test session and worker)."""

from __future__ import annotations

import pytest
import redis

from tests.serving.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    """Database 0 of the session's server, emptied for this test."""
    redis.Redis.from_url(redis_server.url(0)).flushdb()
    return redis_server.url(0)
