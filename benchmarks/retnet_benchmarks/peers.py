"""The baselines a user would pick instead of RetNet, by name: Llama, Mamba, Mamba-2 and RWKV from ``transformers``.

Each is built with random weights and sized to the parameter count of the RetNet it is compared with: the
same vocabulary, hidden width, depth and embedding tying, and one free width solved so the totals agree
(Llama's MLP width, Mamba's and Mamba-2's inner width ``intermediate = expand * d``, RWKV's feed-forward
width; RWKV's state layout fixes its attention width to d). The recurrent peers run on the CPU through their
PyTorch reference paths (their authors ship CUDA kernels for speed), so their step times are not those of
their fast implementations; their state sizes and quality are their own.

:func:`start` and :func:`step` give every peer one decoding interface (prefill, then one token at a time from
its cache: Llama's ``DynamicCache`` of keys and values, Mamba's and Mamba-2's ``DynamicCache`` of convolution
and SSM states, RWKV's list of five ``[B, d, layers]`` tensors, its one-token steps of several rows under
``torch.func.vmap``); :func:`state_nbytes` measures any of them, :func:`repeat_rows` copies a one-row state to a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from retnet.models import RetNetConfig
from retnet_benchmarks.baseline import build_llama, count_parameters, matched_llama_config

BASELINES = ("llama", "mamba", "mamba2", "rwkv")
RECURRENT = ("mamba", "mamba2", "rwkv")
REFERENCE_PATH_NOTE = (
    "Mamba, Mamba-2 and RWKV run through their transformers PyTorch reference paths on the CPU (no CUDA "
    "kernels), so their step times are not those of their fast implementations."
)
MAMBA2_HEAD_DIM = 64
MAMBA2_STATE_SIZE = 128


def _mamba_config(rc: RetNetConfig, width: int) -> Any:
    from transformers import MambaConfig

    cfg = MambaConfig(
        vocab_size=rc.vocab_size,
        hidden_size=rc.hidden_size,
        num_hidden_layers=rc.num_layers,
        tie_word_embeddings=rc.tie_word_embeddings,
        layer_norm_epsilon=rc.norm_eps,
        use_cache=True,
    )
    cfg.intermediate_size = width  # the inner width; ``expand`` is an integer field, this is its exact form
    return cfg


def _mamba2_config(rc: RetNetConfig, heads: int) -> Any:
    from huggingface_hub.dataclasses import strict
    from transformers import Mamba2Config

    @strict
    class _Config(Mamba2Config):  # ``expand`` as a real number: the inner width in whole heads
        expand: float = 2.0

    head_dim = _mamba2_head_dim(rc.hidden_size)
    return _Config(
        vocab_size=rc.vocab_size,
        hidden_size=rc.hidden_size,
        num_hidden_layers=rc.num_layers,
        tie_word_embeddings=rc.tie_word_embeddings,
        layer_norm_epsilon=rc.norm_eps,
        head_dim=head_dim,
        num_heads=heads,
        expand=heads * head_dim / rc.hidden_size,  # validated: expand * d == heads * head_dim exactly
        n_groups=1,
        state_size=MAMBA2_STATE_SIZE,
        chunk_size=64,
        use_cache=True,
    )


def _mamba2_head_dim(hidden_size: int) -> int:
    """64 (the published models' head width), smaller for toy widths so the inner width can be matched."""
    return MAMBA2_HEAD_DIM if hidden_size >= 256 else max(4, hidden_size // 16)


def _rwkv_config(rc: RetNetConfig, width: int) -> Any:
    from transformers import RwkvConfig

    return RwkvConfig(
        vocab_size=rc.vocab_size,
        hidden_size=rc.hidden_size,
        num_hidden_layers=rc.num_layers,
        attention_hidden_size=rc.hidden_size,
        intermediate_size=width,
        tie_word_embeddings=rc.tie_word_embeddings,
        layer_norm_epsilon=rc.norm_eps,
        rescale_every=0,  # the halving every few layers is an fp16 overflow guard; float32 needs none
        use_cache=True,
    )


_CONFIGS = {"mamba": _mamba_config, "mamba2": _mamba2_config, "rwkv": _rwkv_config}
_FREE_WIDTH = {"mamba": "intermediate_size", "mamba2": "num_heads", "rwkv": "intermediate_size"}


def _model_class(name: str) -> type[nn.Module]:
    import transformers

    return getattr(
        transformers, {"mamba": "MambaForCausalLM", "mamba2": "Mamba2ForCausalLM"}.get(name, "RwkvForCausalLM")
    )


def _parameters_at(name: str, rc: RetNetConfig, width: int) -> int:
    """Parameters of the peer with free width ``width``, counted on the meta device (no memory, no init)."""
    with torch.device("meta"):
        return count_parameters(_model_class(name)(_CONFIGS[name](rc, width)))


def solve_width(name: str, rc: RetNetConfig) -> int:
    """The free width that brings the peer's parameter count nearest RetNet's (the count is affine in it)."""
    target = rc.num_parameters()
    a, b = _parameters_at(name, rc, 1), _parameters_at(name, rc, 2)
    width = max(1, round(1 + (target - a) / (b - a)))
    return min(
        (w for w in (width - 1, width, width + 1) if w >= 1), key=lambda w: abs(_parameters_at(name, rc, w) - target)
    )


def peer_config(name: str, rc: RetNetConfig) -> Any:
    """The ``transformers`` config of baseline ``name`` matched to ``rc``."""
    if name not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {name!r}")
    if name == "llama":
        return matched_llama_config(rc)
    return _CONFIGS[name](rc, solve_width(name, rc))


def peer_parameters(name: str, rc: RetNetConfig) -> int:
    """Parameters of baseline ``name`` matched to ``rc``, counted on the meta device."""
    import transformers

    cls = transformers.LlamaForCausalLM if name == "llama" else _model_class(name)
    with torch.device("meta"):
        return count_parameters(cls(peer_config(name, rc)))


class CausalLM(nn.Module):
    """A baseline behind the call the project's trainer and evaluator make: ``model(ids, mode=..., labels=...)``.

    ``mode`` (RetNet's form) is accepted and ignored; the output is the ``transformers`` one (``.logits``,
    ``.loss`` when ``labels`` are given, shifted inside as for RetNet), without a decode cache.

    Mamba-2's reference scan pads every sequence to a whole number of chunks (``chunk_size``, 64 here); for
    shorter sequences the chunk is cut to the sequence length. The chunked scan is exact for any chunk size
    (same outputs and gradients), and short batches (MQAR's 16-token rows) then cost ~8x less.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.mamba2_mixers = [m for m in model.modules() if type(m).__name__ == "Mamba2Mixer"]

    def forward(self, input_ids: torch.Tensor, mode: str = "auto", labels: torch.Tensor | None = None) -> Any:
        for mixer in self.mamba2_mixers:
            mixer.chunk_size = min(self.model.config.chunk_size, input_ids.shape[-1])
        return self.model(input_ids=input_ids, labels=labels, use_cache=False)


def _build(name: str, cfg: Any, seed: int) -> nn.Module:
    if name == "llama":
        return build_llama(cfg, seed)
    torch.manual_seed(seed)
    return _model_class(name)(cfg).float().eval()


def build_trainable(name: str, retnet_config: RetNetConfig, seed: int = 0) -> CausalLM:
    """Baseline ``name`` sized to ``retnet_config`` (random weights from ``seed``) as a :class:`CausalLM`, to
    train with the same loop as RetNet (the recurrent peers through their PyTorch reference paths on the CPU).

    Mamba gets ``use_mambapy``: transformers' own training fallback without CUDA kernels, a parallel scan
    (the ``mambapy`` package, extra ``bench-peers``) in place of a per-token loop whose backward is quadratic
    in the length. It computes the same recurrence; without the package transformers keeps the loop.
    """
    cfg = peer_config(name, retnet_config)
    if name == "mamba":
        cfg.use_mambapy = True
    return CausalLM(_build(name, cfg, seed))


def build_baseline(name: str, retnet_config: RetNetConfig, seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """Baseline ``name`` (float32, eval mode, random weights from ``seed``) sized to ``retnet_config``.

    Returns the model and its facts: ``params``, ``retnet_params``, the solved free width, the decode state's
    ``state_bytes_fixed`` and ``state_bytes_per_token`` (batch 1, measured on real caches after prefills of two
    lengths), and ``notes``.
    """
    cfg = peer_config(name, retnet_config)
    model = _build(name, cfg, seed)
    fixed, per_token = measure_state_bytes(model)
    free = _FREE_WIDTH.get(name, "intermediate_size")
    info = {
        "name": name,
        "class": type(model).__name__,
        "params": count_parameters(model),
        "retnet_params": retnet_config.num_parameters(),
        "hidden_size": cfg.hidden_size,
        "num_layers": cfg.num_hidden_layers,
        "free_width": {free: getattr(cfg, free)},
        "state_bytes_fixed": fixed,
        "state_bytes_per_token": per_token,
        "notes": REFERENCE_PATH_NOTE if name in RECURRENT else "SDPA attention, DynamicCache of keys and values",
    }
    return model, info


def state_nbytes(cache: Any) -> int:
    """Bytes of a peer's decode state: tensors inside caches, cache layers, lists and dicts, counted once each."""
    seen: set[int] = set()

    def walk(x: Any) -> int:
        if isinstance(x, torch.Tensor):
            if id(x) in seen:
                return 0
            seen.add(id(x))
            return x.numel() * x.element_size()
        if isinstance(x, (list, tuple)):
            return sum(walk(v) for v in x)
        if isinstance(x, dict):
            return sum(walk(v) for v in x.values())
        if hasattr(x, "layers"):  # a transformers Cache
            return sum(walk(layer) for layer in x.layers)
        parts = ("keys", "values", "conv_states", "recurrent_states")  # a cache layer's tensors
        return sum(walk(getattr(x, k)) for k in parts if hasattr(x, k))

    return walk(cache)


def measure_state_bytes(model: nn.Module, lengths: tuple[int, int] = (2, 5)) -> tuple[int, int]:
    """(fixed bytes, bytes per token) of ``model``'s batch-1 decode state, from real prefills of two lengths."""
    sizes = []
    for n in lengths:
        ids = torch.zeros(1, n, dtype=torch.long, device=next(model.parameters()).device)
        with torch.no_grad():
            sizes.append(state_nbytes(start(model, ids)[1]))
    per_token = (sizes[1] - sizes[0]) // (lengths[1] - lengths[0])
    return sizes[0] - per_token * lengths[0], per_token


def peers_note(models: Sequence[str], label: str, how: str) -> str:
    """A report's notes line on the recurrent peers among ``models`` (empty when none ran): how they are built,
    ``how`` they ran, and that their CPU paths are reference implementations. ``label``: their rows' marker."""
    peers = [m for m in models if m in RECURRENT]
    if not peers:
        return ""
    return (
        f"- Peers ({', '.join(peers)}; {label}): `transformers` models built by "
        "`retnet_benchmarks.peers.build_baseline` at RetNet's parameter count (same width, depth, vocabulary; "
        f"one inner width solved), {how} {REFERENCE_PATH_NOTE}\n"
    )


def _kind(model: nn.Module) -> str:
    return {"LlamaForCausalLM": "llama", "RwkvForCausalLM": "rwkv"}.get(type(model).__name__, "ssm")


def start(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Prefill ``ids`` in one forward: (logits ``[B, T, V]``, the decode state after them)."""
    return step(model, ids, None)


def step(model: nn.Module, ids: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
    """Run ``ids`` on top of ``state`` (``None``: empty): (logits, the updated state)."""
    kind = _kind(model)
    if kind == "llama":
        from transformers import DynamicCache

        cache = state if state is not None else DynamicCache(config=model.config)
        out = model(input_ids=ids, cache=cache, use_cache=True)
        return out.logits, cache
    if kind == "rwkv":
        if state is not None and ids.shape[0] > 1 and ids.shape[1] == 1:
            return _rwkv_rows_step(model, ids, state)
        out = model(input_ids=ids, state=state, use_cache=True)
        return out.logits, out.state
    if state is None:
        from transformers import DynamicCache

        state = DynamicCache(config=model.config)
    out = model(input_ids=ids, cache=state, use_cache=True)
    return out.logits, state


def _rwkv_rows_step(model: nn.Module, ids: torch.Tensor, state: list[torch.Tensor]) -> tuple[torch.Tensor, Any]:
    """RWKV's one-token step for several rows, each row as its own batch of one under ``torch.func.vmap``.

    ``transformers``' one-token step mixes the ``[B, 1, d]`` hidden states with a ``[B, d]`` token-shift slice,
    which broadcasts to ``[B, B, d]`` when ``B > 1``; vmap runs the batch-1 step, which is exact, with the
    rows as a batched dimension of the same kernels.
    """

    def one(token: torch.Tensor, *parts: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        out = model(input_ids=token.view(1, 1), state=[p[None] for p in parts], use_cache=True)
        return out.logits[0], tuple(p[0] for p in out.state)

    logits, parts = torch.func.vmap(one)(ids[:, 0], *state)
    return logits, list(parts)


def repeat_rows(state: Any, batch: int) -> Any:
    """A batch-1 decode state (any peer's) as ``batch`` copies of its row: a prefill of one row serves a batch."""
    rows = torch.zeros(batch, dtype=torch.long)
    if isinstance(state, list):  # RWKV's tensors
        return [s.index_select(0, rows.to(s.device)) for s in state]
    state.reorder_cache(rows)  # a transformers Cache: every layer's tensors, keys/values or conv/SSM states
    return state
