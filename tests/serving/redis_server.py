"""A real ``redis-server`` (Debian's package) on a free local port in a temporary folder, for the store tests."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis

from tests.serving.helpers import free_port

MISSING = (
    "redis-server is not installed; the Redis store tests need a real server: "
    "apt-get install -y redis-server (as root; .ci/run does this)"
)


class RedisServer:
    """``redis-server`` without persistence, bound to 127.0.0.1; ``url(db)`` for clients; always stopped."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 20.0) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail(MISSING)
        for _ in range(5):  # a free port may be taken before the server binds it: try another
            self.port = free_port()
            log = open(self.folder / f"redis-{self.port}.log", "wb")
            cmd = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
            cmd += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    redis.Redis(port=self.port, socket_connect_timeout=1).ping()
                    return self
                except redis.ConnectionError:
                    time.sleep(0.05)
            self.stop()
        raise RuntimeError(f"redis-server did not start; see the logs in {self.folder}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
