"""``ServerConfig``: every limit and option of ``retnet serve`` in one validated place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class ServerConfig:
    model_dir: Path
    model_name: str | None = None  # the id clients pass as ``model``; default: the directory name
    data_dir: Path | None = None  # conversation store; default: MODEL_DIR/../<name>-conversations
    api_key: str | None = None
    dtype: str = "float32"
    threads: int | None = None
    compile: bool = False  # torch.compile the decode step (retnet.models.decode_step)
    quantize: str = "none"  # "int8": int8 weights for every linear layer (CPU, float32 only)
    # request limits
    max_prompt_tokens: int = 4096  # new tokens per request (a conversation's history is not counted)
    max_tokens_limit: int = 1024  # largest allowed max_tokens
    default_max_tokens: int = 256  # chat completions without max_tokens (completions default to 16, as OpenAI)
    max_body_bytes: int = 1 << 20
    max_stop: int = 4
    request_timeout_s: float = 30.0  # to receive a request's headers, and again its body (slow clients)
    # scheduling
    max_batch: int = 64  # sequences decoded together
    max_queue: int = 256  # requests waiting to start; more get HTTP 429
    prefill_chunk: int = 256  # prompt tokens per prefill step, so long prompts interleave with decoding
    progress_interval_s: float = 1.0  # a streaming request's prefill progress (an SSE comment) at most this often
    # conversation store
    max_conversations: int = 10_000
    max_store_bytes: int = 4 << 30
    conversation_ttl_s: float = 7 * 24 * 3600.0
    state_cache_bytes: int = 256 << 20  # recently used states kept in memory too (write-through)
    store: str = "sqlite"  # "sqlite" (files under data_dir) or a Redis URL: redis://host:port/db
    redis_lock_ttl_s: float = 30.0  # a dead process's conversation locks expire after this long
    # prefix states: states of exact token prefixes, shared by requests that start with the same tokens
    prefix_cache_bytes: int = 256 << 20  # 0 turns the prefix cache off
    prefix_every: int = 256  # also keep a prefix state every this many prompt tokens (0: message boundaries only)

    def __post_init__(self) -> None:
        self.model_dir = Path(self.model_dir)
        if self.model_name is None:
            self.model_name = self.model_dir.resolve().name
        if self.data_dir is None:
            self.data_dir = self.model_dir.resolve().parent / f"{self.model_name}-conversations"
        self.data_dir = Path(self.data_dir)
        if self.dtype not in ("float32", "float64", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, float64, bfloat16 or float16, got {self.dtype!r}")
        for name in (
            "max_prompt_tokens",
            "max_tokens_limit",
            "default_max_tokens",
            "max_body_bytes",
            "max_batch",
            "max_queue",
            "prefill_chunk",
            "max_conversations",
            "max_store_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.store != "sqlite" and not self.store.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"store must be 'sqlite' or a Redis URL (redis://host:port/db), got {self.store!r}")
        if not 0 < self.redis_lock_ttl_s < float("inf"):
            raise ValueError(f"redis_lock_ttl_s must be a positive number of seconds, got {self.redis_lock_ttl_s}")
        for name in ("prefix_cache_bytes", "prefix_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.state_cache_bytes < 0:
            raise ValueError(f"state_cache_bytes must be >= 0, got {self.state_cache_bytes}")
        if not 0 < self.progress_interval_s < float("inf"):
            raise ValueError(
                f"progress_interval_s must be a positive number of seconds, got {self.progress_interval_s!r}"
            )
        if not 0 < self.request_timeout_s < float("inf"):
            raise ValueError(f"request_timeout_s must be a positive number of seconds, got {self.request_timeout_s}")
        if not self.conversation_ttl_s > 0:
            raise ValueError(f"conversation_ttl_s must be > 0, got {self.conversation_ttl_s}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
