"""Tiny served models and a real ``retnet serve`` subprocess on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from retnet.models import RetNetConfig
from retnet.serving.random_model import write_random_model

SRC = Path(__file__).resolve().parents[2] / "src"


def tiny_config(**overrides) -> RetNetConfig:
    cfg = dict(
        vocab_size=257,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        value_dim=48,
        ffn_dim=64,
        chunk_size=8,
        eos_token_id=256,
    )
    cfg.update(overrides)
    return RetNetConfig(**cfg)


def make_model_dir(path: Path, seed: int = 0) -> Path:
    return write_random_model(path, tiny_config(), seed=seed)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m retnet serve`` as a subprocess; always stopped by ``stop()`` / the context manager."""

    def __init__(self, model_dir: Path, data_dir: Path, *args: str, api_key: str | None = None) -> None:
        self.model_dir, self.data_dir, self.args, self.api_key = model_dir, data_dir, list(args), api_key
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log = data_dir.parent / f"server-{data_dir.name}.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> ServerProcess:
        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        env.pop("RETNET_API_KEY", None)
        if self.api_key is not None:
            env["RETNET_API_KEY"] = self.api_key
        cmd = [sys.executable, "-m", "retnet", "serve", str(self.model_dir), "--port", str(self.port)]
        cmd += ["--data-dir", str(self.data_dir), "--threads", "1", *self.args]
        self.logfh = open(self.log, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.logfh, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.base_url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not become healthy in {timeout} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.proc = None
        if getattr(self, "logfh", None):
            self.logfh.close()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
