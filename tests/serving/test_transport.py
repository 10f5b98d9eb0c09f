"""``retnet serve`` on a real socket (127.0.0.1 only): slow and partial requests are timed out, HEAD works
through uvicorn, and a taken port is a one-line error before the model loads."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tests.cli.helpers import run_cli
from tests.serving.helpers import ServerProcess, make_model_dir


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("t")
    proc = ServerProcess(make_model_dir(root / "m"), root / "data", "--request-timeout", "1")
    proc.start()
    yield proc
    proc.stop()


def _closed_within(sock: socket.socket, seconds: float) -> tuple[float, bytes]:
    """Seconds until the server closes ``sock``, and what it sent before."""
    sock.settimeout(seconds)
    t0, got = time.monotonic(), b""
    while chunk := sock.recv(4096):
        got += chunk
    return time.monotonic() - t0, got


@pytest.mark.slow
@pytest.mark.parametrize(
    "sent",
    [b"", b"POST /v1/compl", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: app"],
    ids=["nothing", "half a request line", "half the headers"],
)
def test_a_stalled_request_head_is_closed(server, sent):
    """Issue #20.8: partial requests were never timed out (2,000 open for 30 s grew RSS by 24 MiB)."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(sent)
        elapsed, got = _closed_within(sock, 10)
    assert elapsed < 5 and got == b""


@pytest.mark.slow
def test_a_stalled_body_is_a_408(server):
    head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head + b'{"model": "m", "prom')
        elapsed, got = _closed_within(sock, 10)
    assert elapsed < 5 and got.startswith(b"HTTP/1.1 408") and b"request_timeout" in got


@pytest.mark.slow
def test_keep_alive_requests_are_not_cut_by_the_head_deadline(server):
    with httpx.Client(base_url=server.base_url) as client:
        for _ in range(3):
            assert client.head("/health").status_code == 200
            time.sleep(0.6)  # each pause is below the keep-alive limit; together they pass the head deadline
        assert client.get("/v1/models").json()["data"][0]["id"] == "m"


def test_a_taken_port_is_one_line_before_the_model_loads(tmp_path, capsys):
    """Issue #20.8: a busy port printed the banner, then a traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = run_cli(capsys, "serve", tmp_path / "no-model-needed", "--port", port)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert f"127.0.0.1:{port}" in err and "Traceback" not in err
