"""The one-token decode step, lean: ``make_decode_step(model)(ids [B, 1], state) -> (logits [B, V], state)``.

The model's ``forward`` handles every length, mask and form; a decode step is always one real token per row
from a state, so this path skips what that generality costs per layer per token: argument validation, the
form/backend choice, padding masks, the time axis, the ``[B, T, H]`` decay expansion. Retention and gated
retention layers run their recurrence here (``S = gamma S + k^T v``, ``o = q S``), the state updated in place
when asked; attention and YOCO cross-attention layers (growing KV caches) run their own modules unchanged.
The result equals ``model(ids, state=state, use_cache=True, mode="recurrent")`` (tested in float64).

On the CPU the step first stores every linear weight input-major (:func:`store_weights_input_major`: the same
``[out, in]`` values, laid out as the transpose of an ``[in, out]`` tensor), which MKL's one-row product streams
faster than the row-major layout, and lays the projections that read the same input (a block's q/k/v/g; its
FFN's fc1/gate) side by side in one matrix each (:class:`SideBySide`), one wide product instead of several.

``compile=True`` on the CPU removes the step's per-operation overhead: inductor fuses everything between the
matrix products into a few loops. The products of a one-row step then run one of two ways (``products=``):
``"blas"``, the BLAS library's one-row product on the input-major, side-by-side weights (MKL on Intel CPUs
reads them close to the memory bandwidth), or ``"rows"``, inductor-generated row dot products over row-major
weight copies (:func:`_row_products`; faster where the BLAS takes a slow path, as MKL does on AMD CPUs).
``"auto"`` picks by timing the model's own matrices once (:func:`blas_reads_faster`).

The recurrence itself: on CUDA (eager) through :func:`retnet.ops.retention` with ``mode="recurrent"``, which
dispatches to the fused Triton recurrent kernel (one launch reads and writes the state once, no value check
synchronises); on the CPU, and under ``torch.compile`` (whose inductor fuses the PyTorch form itself), in
PyTorch here. ``kernel=`` overrides that choice (``True`` on the CPU runs the operator's torch backend).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from retnet.layers.ffn import GatedFFN, plain_linear
from retnet.layers.rotary import rotate_every_two, rotate_pairs, rotation
from retnet.models.quantize import fuse_int8_linears
from retnet.models.state import RetNetState
from retnet.ops import retention

DecodeStepFn = Callable[[torch.Tensor, RetNetState], tuple[torch.Tensor, RetNetState]]
LinearFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]

Products = Literal["auto", "rows", "blas"]
PRODUCTS: tuple[str, ...] = ("auto", "rows", "blas")

PACK_MIN_BATCH = 4
"""Batches of at least this many rows run the CPU float32 linears on oneDNN-packed weights (see
:class:`PackedLinears`); smaller ones on the input-major weights through ``F.linear``."""


def _call(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return module(x)


def _row_products(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A plain linear on ``x [B, in]`` written as each weight row's dot product with ``x``, for the CPU-compiled
    one-row step: inductor turns it into one loop that streams the row-major weight once (inductor's freezing
    folds ``contiguous()`` of an input-major weight into a row-major constant at compile time). Measured on the
    ~98M model's matrices, one thread: ~30 GB/s where oneDNN's packed one-row product reads ~24 and MKL's ~22."""
    if not plain_linear(module):
        return module(x)
    return (module.weight.contiguous() * x[:, None, :]).sum(-1)


def blas_reads_faster(mats: list[torch.Tensor], rounds: int = 5) -> bool:
    """Whether one-row BLAS products over ``mats`` (``[in, out]`` each, as a step multiplies by them) take less
    time than a plain sum of the same matrices, timed in turn over ``rounds`` rounds (medians).

    The sum stands in for the compiled step's row dot products (:func:`_row_products`): both are one
    vectorised pass that streams each matrix once, and inductor's loop reads no faster than ATen's sum
    (measured on the ~98M model's matrices, one thread: 0.97x a sum's rate on an AMD CPU, 0.89x on an Intel
    Xeon), so a BLAS that beats the sum beats the rows. Timing a proxy avoids compiling the step twice."""
    xs = [torch.randn(1, m.shape[0], dtype=m.dtype) for m in mats]
    blas, sums = [], []
    with torch.no_grad():
        for _ in range(rounds + 1):  # the first round warms up (page faults, library initialisation)
            t0 = time.perf_counter()
            for x, m in zip(xs, mats):
                x @ m
            t1 = time.perf_counter()
            for m in mats:
                m.sum()
            blas.append(t1 - t0)
            sums.append(time.perf_counter() - t1)
    return sorted(blas[1:])[rounds // 2] < sorted(sums[1:])[rounds // 2]


class PackedLinears:
    """CPU float32 linear layers on weights packed once into oneDNN's blocked layout.

    A few-row product on MKL's path spends more time computing than streaming the weight; oneDNN's kernel on a
    packed weight does the same product faster. The packed copy is made on first use of each module and kept
    (as many bytes again as the weights packed); it is made again when the weight tensor changes (another
    tensor or an in-place update). Anything else (other dtypes, a bias, no oneDNN) runs the module itself.
    """

    def __init__(self, batch_hint: int | None = None) -> None:
        self.batch_hint = batch_hint  # the row count oneDNN's layout is chosen for (None: the first call's)
        self._packed: dict[int, tuple[int, int, torch.Tensor]] = {}

    @staticmethod
    def applies(x: torch.Tensor) -> bool:
        return x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()

    def __len__(self) -> int:
        return len(self._packed)

    def __call__(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if not (plain_linear(module) and module.weight.dtype == torch.float32 and self.applies(x)):
            return module(x)
        w = module.weight
        key = (w.data_ptr(), w._version)
        entry = self._packed.get(id(module))
        if entry is None or entry[:2] != key:
            hint = self.batch_hint or x.shape[0]
            entry = (*key, torch.ops.mkldnn._reorder_linear_weight(w.detach(), hint))
            self._packed[id(module)] = entry
        return torch.ops.mkldnn._linear_pointwise(x, entry[2], None, "none", [], "")


def _ffn(ffn: nn.Module, x: torch.Tensor, linear: LinearFn, fused: nn.Module | None) -> torch.Tensor:
    """The block's FFN on ``x [B, d]``, its linears through ``linear`` (a gated FFN in eval mode); ``fused``:
    one int8 linear computing ``fc1`` and ``gate`` together."""
    if type(ffn) is not GatedFFN or (linear is _call and fused is None):
        return ffn(x)
    if fused is not None:
        a, b = fused(x).split(ffn.fc1.out_features, dim=-1)
    else:
        a, b = linear(ffn.fc1, x), linear(ffn.gate, x)
    return linear(ffn.fc2, ffn.act(a) * b)


class SideBySide:
    """Bias-free float linears that read the same input, applied as one product.

    Their weights are laid out side by side in one input-major ``[in, sum(out)]`` tensor (``weight_t``) and each
    module's weight becomes a view of its columns: the same values and no second copy, so the model's own
    ``forward`` and every other caller see the same numbers. A one-row product over the wide matrix streams the
    weights faster than several narrow ones, and makes one call instead of several. ``current()`` says whether
    the modules still hold those views (a ``.to()``, ``load_state_dict(assign=True)`` or ``weight.data = ...``
    replaces them; in-place updates keep them)."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.modules = tuple(modules)
        existing = self._laid_out(modules)
        if existing is not None:  # already side by side (another step on this model): share, do not copy
            self.weight_t = existing
        else:
            with torch.no_grad():
                self.weight_t = torch.cat([m.weight.t() for m in modules], dim=1)  # [in, sum(out)], contiguous
                start = 0
                for m in modules:
                    n = m.weight.shape[0]
                    m.weight.data = self.weight_t[:, start : start + n].t()
                    start += n
        self._views = tuple((m.weight.data_ptr(), m.weight.stride()) for m in modules)

    @staticmethod
    def _laid_out(modules: list[nn.Module]) -> torch.Tensor | None:
        """The ``[in, sum(out)]`` matrix the modules' weights are already adjacent column blocks of, or ``None``."""
        ws = [m.weight for m in modules]
        width = sum(w.shape[0] for w in ws)
        offset = ws[0].storage_offset()
        for w in ws:
            if w.t().stride() != (width, 1) or w.untyped_storage().data_ptr() != ws[0].untyped_storage().data_ptr():
                return None
            if w.storage_offset() != offset:
                return None
            offset += w.shape[0]
        return ws[0].detach().as_strided((ws[0].shape[1], width), (width, 1))

    @staticmethod
    def applies(modules: list[nn.Module]) -> bool:
        """Plain bias-free CPU float32/float64 linears of one dtype and input width."""
        if len(modules) < 2 or not all(plain_linear(m) for m in modules):
            return False
        ws = [m.weight for m in modules]
        return (
            all(w.device.type == "cpu" and w.dim() == 2 for w in ws)
            and len({w.dtype for w in ws}) == 1
            and ws[0].dtype in (torch.float32, torch.float64)
            and len({w.shape[1] for w in ws}) == 1
        )

    def current(self) -> bool:
        return all((m.weight.data_ptr(), m.weight.stride()) == v for m, v in zip(self.modules, self._views))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight_t


class _Fused(NamedTuple):
    """A retention block's input projections fused for the step (``None`` where they are not): int8 linears
    fused into one (:func:`fuse_int8_linears`), or CPU float ones laid out side by side (:class:`SideBySide`)."""

    qkvg: nn.Module | SideBySide | None
    ffn_in: nn.Module | SideBySide | None

    def current(self) -> bool:
        return all(f.current() for f in self if isinstance(f, SideBySide))

    def float_side_by_side(self) -> bool:
        return any(isinstance(f, SideBySide) for f in self)


_NOT_FUSED = _Fused(None, None)


def _fuse(modules: list[nn.Module], side_by_side: bool) -> nn.Module | SideBySide | None:
    fused = fuse_int8_linears(modules)
    if fused is None and side_by_side and SideBySide.applies(modules):
        return SideBySide(modules)
    return fused


def _fuse_block(block: nn.Module, side_by_side: bool) -> _Fused:
    """``block``'s q/k/v/g and FFN input projections fused: int8 ones always, CPU float ones when
    ``side_by_side`` (which lays their weights out side by side, in place)."""
    mix, ffn = block.retention, block.ffn
    qkvg = _fuse([mix.q_proj, mix.k_proj, mix.v_proj, mix.g_proj], side_by_side)
    ffn_in = _fuse([ffn.fc1, ffn.gate], side_by_side) if type(ffn) is GatedFFN else None
    return _Fused(qkvg, ffn_in)


def _retention_step(
    block: nn.Module,
    x: torch.Tensor,
    sin: torch.Tensor,
    cos: torch.Tensor,
    state: torch.Tensor,
    row_scale: torch.Tensor | None,
    in_place: bool,
    use_operator: bool,
    gammas: tuple[float, ...] | None = None,
    linear: LinearFn = _call,
    fused: _Fused = _NOT_FUSED,
    turns: tuple[torch.Tensor, torch.Tensor] | None = None,
    for_inductor: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One retention block (retention + FFN) for ``x [B, d]``; returns the new ``x`` and layer state.

    ``gammas``: the per-head decays as Python numbers (fixed-decay layers), which lets each head's update be
    one fused ``gamma S + k^T v``. ``linear(module, x)`` applies the block's projections (:class:`PackedLinears`
    for large CPU batches); ``fused``: int8 projections fused for the step; ``turns``: the rotation of q and of
    k (with k's ``Dk**-0.5``) as complex factors (float32/float64), else ``sin``/``cos`` rotate;
    ``for_inductor``: the recurrence in the form ``torch.compile`` fuses best."""
    mix = block.retention
    B = x.shape[0]
    H, Dk, Dv = mix.num_heads, mix.key_dim, mix.head_dim
    h = block.retention_layer_norm(x)
    cd = sin.dtype
    if fused.qkvg is not None:
        q, k, v, g = fused.qkvg(h).split([H * Dk, H * Dk, H * Dv, mix.g_proj.out_features], dim=-1)
    else:
        q, k, v, g = linear(mix.q_proj, h), linear(mix.k_proj, h), linear(mix.v_proj, h), None
    v = v.reshape(B, H, Dv)
    if turns is not None and q.dtype == cd:
        q, k = rotate_pairs(q.reshape(B, H, Dk), turns[0]), rotate_pairs(k.reshape(B, H, Dk), turns[1])
    else:
        q = q.reshape(B, H, Dk).to(cd)
        k = (k.reshape(B, H, Dk) * Dk**-0.5).to(cd)
        q = q * cos + rotate_every_two(q) * sin
        k = k * cos + rotate_every_two(k) * sin
    log_decay = mix.decay(h[:, None])  # [H] fixed or [B, 1, H] gated
    if use_operator:
        o, new_state = retention(
            q[:, None],
            k[:, None],
            v[:, None],
            log_decay,
            mode="recurrent",
            initial_state=state,
            output_final_state=True,
        )
        o = o[:, 0]
        if in_place:
            new_state = state.copy_(new_state)
    elif gammas is not None and not for_inductor:
        # Head by head, so that the head's state (a few hundred KiB) is still in cache when it is read again:
        # one fused scale-and-add pass (baddbmm with beta = gamma), then o = q S from cache.
        sd = state.dtype
        new_state = state if in_place else state.clone()
        qs, ks, vs = q.to(sd), k.to(sd), v.to(sd)
        outs = []
        for head, gamma in enumerate(gammas):
            s = new_state[:, head]
            s.baddbmm_(ks[:, head, :, None], vs[:, head, None, :], beta=gamma)
            outs.append(torch.bmm(qs[:, head, None, :], s))
        o = torch.cat(outs, dim=1).to(v.dtype)
    else:
        sd = state.dtype
        decay = torch.exp(log_decay.to(sd))
        decay = decay.view(-1, H, 1, 1) if decay.dim() > 1 else decay.view(1, H, 1, 1)
        if for_inductor:
            # In the form inductor compiles best: o from the old state, q (gamma S + k^T v) = gamma (q S) +
            # (q . k) v, and a loop that writes gamma S + k^T v over the state (in place when asked). One row
            # with BLAS products: q S as a one-row product per head, which inductor leaves a library call that
            # streams the head's state; as a sum over the key dimension inductor fuses it with the update into
            # a kernel that cannot also write the state, so it writes a buffer and copies it back later (the
            # one-row step of the ~98M model measured ~5% slower; written as o = q S_new, ~4% slower again).
            # Row products (where the BLAS reads slower than inductor's loops) keep the sum.
            qs, ks, vs = q.to(sd), k.to(sd), v.to(sd)
            qk = (qs * ks).sum(-1, keepdim=True)
            if B == 1 and linear is not _row_products:
                qS = torch.cat([torch.mm(qs[0, head, None], state[0, head]) for head in range(H)])[None]
            else:
                qS = (qs[..., :, None] * state).sum(-2)
            o = (decay[..., 0] * qS + qk * vs).to(v.dtype)
            new_state = state * decay + ks[..., :, None] * vs[..., None, :]
            if in_place:
                new_state = state.copy_(new_state)
        else:
            # Two passes over the state, no [B, H, Dk, Dv] temporary: scale, then add the outer product k^T v.
            new_state = state.mul_(decay) if in_place else state * decay
            new_state.addcmul_(k.to(sd)[..., :, None], v.to(sd)[..., None, :])
            o = torch.matmul(q.to(sd)[:, :, None, :], new_state).view(B, H, Dv).to(v.dtype)
    if row_scale is not None:
        o = o * row_scale[..., None].to(o.dtype)
    o = mix.head_norm(o).reshape(B, H * Dv)
    if g is None:
        g = linear(mix.g_proj, h)
    x = x + linear(mix.out_proj, F.silu(g) * o)
    x = x + _ffn(block.ffn, block.final_layer_norm(x), linear, fused.ffn_in)
    return x, new_state


def store_weights_input_major(model: nn.Module) -> int:
    """Lay out every CPU ``nn.Linear`` weight of ``model`` input-major, in place; returns how many were changed.

    The parameter keeps its object, shape and values (``weight.data`` becomes the transpose of a contiguous
    ``[in, out]`` tensor), so every caller of the module sees the same numbers; what changes is the memory
    order, which lets a one-row ``F.linear`` run as a plain ``x @ W^T`` product that reads the weight closer to
    the memory bandwidth. A weight shared with an embedding table (tied output layer) is left row-major, so a
    token's embedding stays one contiguous row."""
    shared = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    changed = 0
    with torch.no_grad():
        for module in model.modules():
            w = getattr(module, "weight", None)
            if type(module) is not nn.Linear or w.device.type != "cpu" or id(w) in shared or not w.is_contiguous():
                continue
            if w.dim() != 2 or min(w.shape) <= 1:
                continue
            w.data = w.data.t().contiguous().t()
            changed += 1
    return changed


class _Position(NamedTuple):
    """What a step's rotation and decay normalisation need of the rows' positions, computed before the step
    proper: ``sin``/``cos`` ``[B, 1, Dk]`` and the ``normalize_decay`` row factors ``[B, H]`` (or ``None``).
    Outside the compiled region, so that inductor cannot inline the trigonometry into every loop that reads
    the rotated q or k (it did: a sine and a cosine per state element)."""

    sin: torch.Tensor
    cos: torch.Tensor
    row_scale: torch.Tensor | None


class _StepModule(nn.Module):
    """A step as a module over the model, for ``torch.compile``: the model's weights are then module
    parameters, which inductor's freezing turns into constants (and prepacks)."""

    def __init__(self, step: DecodeStep) -> None:
        super().__init__()
        self.model = step.model
        self.step_fn = step._step

    def forward(self, ids: torch.Tensor, state: RetNetState, position: _Position) -> tuple[torch.Tensor, RetNetState]:
        return self.step_fn(ids, state, self.model, position)


class DecodeStep:
    """``step(ids, state) -> (logits, state)`` for a :class:`RetNetForCausalLM` in eval mode, under no_grad.

    ``in_place=True`` updates the passed state's retention tensors and offsets in place and returns the same
    object (the caller owns the state and keeps no copy); otherwise the passed state is left untouched.
    ``kernel``: run the recurrence through :func:`retnet.ops.retention` (default: on CUDA when not compiled).
    ``pack_min_batch``: eager CPU float32 steps of at least this many rows run their linears on oneDNN-packed
    copies of the weights (:class:`PackedLinears`, made on the first such step; ``None`` never packs).
    ``compile_s`` is the wall time of the first call when compiled (tracing + code generation, plus the timing
    that picked ``products``), else ``None``.
    On the CPU, construction lays the model's linear weights out input-major (:func:`store_weights_input_major`;
    values unchanged). ``products`` says how a CPU-compiled one-row step multiplies (``"auto"``: timed at
    construction, :func:`blas_reads_faster`; the choice is kept in ``products``): ``"rows"`` computes row dot
    products over row-major copies (:func:`_row_products`) with the recurrence in one fused pass, the whole
    step one inductor C++ kernel, under inductor's ``freezing`` (the weights become constants of the compiled
    step: a second copy, made at the first call; later changes to the model's weights are not seen by it;
    larger batches then use oneDNN's products on prepacked weights, chosen by ``max_autotune``'s timing);
    ``"blas"`` calls the BLAS library's product on the model's own input-major, side-by-side weights (no copy),
    inductor fusing everything between the products.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        compile: bool = False,
        in_place: bool = False,
        kernel: bool | None = None,
        pack_min_batch: int | None = PACK_MIN_BATCH,
        products: Products = "auto",
    ) -> None:
        if products not in PRODUCTS:
            raise ValueError(f"products must be one of {', '.join(PRODUCTS)}, got {products!r}")
        self.model = model
        on_cuda = model.model.embed_tokens.weight.device.type == "cuda"
        self.use_operator = (on_cuda and not compile) if kernel is None else kernel
        if not on_cuda:
            store_weights_input_major(model)
        self.in_place = in_place
        self.compiled = compile
        self.compile_s: float | None = None
        self._choice_s = 0.0  # the products choice's timing, counted into compile_s
        # Eager CPU steps of at least pack_min_batch rows: linears on oneDNN-packed weights (None: never).
        self.pack_min_batch = None if (on_cuda or compile) else pack_min_batch
        self.packed = PackedLinears()
        core = model.model
        self._retention_layers = {i for i, kind in enumerate(core.config.layer_kinds) if kind in ("retention", "gated")}
        # Fixed decays as Python numbers, read once here (never a device sync inside a step).
        self._gammas = {
            i: tuple(torch.exp(core.layers[i].retention.log_decay.double()).tolist())
            for i, kind in enumerate(core.config.layer_kinds)
            if kind == "retention"
        }
        # Each retention block's q/k/v/g and FFN input projections as one product apiece: int8 linears fused;
        # on the CPU, float weights laid out side by side (in place, values unchanged).
        self._side_by_side = not on_cuda and not (compile and products == "rows")
        self._fused = {i: _fuse_block(core.layers[i], self._side_by_side) for i in self._retention_layers}
        # How a CPU-compiled step multiplies (None otherwise): BLAS products on these weights, or row dot
        # products over row-major copies the compiled step makes for itself (then nothing is side by side)
        self.products: str | None = None
        if compile and not on_cuda:
            self.products = products
            if products == "auto":
                t0 = time.perf_counter()
                self.products = "blas" if blas_reads_faster(self.weight_products()) else "rows"
                self._choice_s = time.perf_counter() - t0
            if self.products == "rows" and self._side_by_side:
                self._side_by_side = False
                self._fused = {i: _fuse_block(core.layers[i], False) for i in self._retention_layers}
        dims = {core.layers[i].retention.key_dim for i in self._retention_layers}
        self._key_dim = dims.pop() if len(dims) == 1 else None
        fn: Callable = _StepModule(self)
        if compile:
            dynamic = False if not self._has_kv_cache() else None
            if on_cuda:
                fn = torch.compile(fn, mode="reduce-overhead", dynamic=dynamic)  # CUDA graphs
            else:
                # "rows": inductor's freezing (set around each call, see _compile_config) makes the weights
                # constants of the compiled step: a one-row step folds row-major copies for its row products
                # (_row_products); larger batches' products run on prepacked weights, their kernel (inductor's
                # own GEMM or oneDNN's) picked by max_autotune's timing. "blas": the products stay BLAS calls
                # on the model's weights.
                # cpp_wrapper: the compiled step's calls (its ~50 products and the fused loops between them)
                # made from generated C++, not from a generated Python function (~5% of a one-row step).
                fn = torch.compile(fn, options={"max_autotune": True, "cpp_wrapper": True}, dynamic=dynamic)
        self._fn = fn
        self._freeze = self.products == "rows"
        self._linears = [m for m in model.modules() if plain_linear(m)] if self._freeze else []

    def _compile_config(self) -> AbstractContextManager:
        """Inductor's ``freezing`` for the CPU-compiled step, set while it runs (it is read when the step is
        compiled, at the first call or a recompilation; ``torch.compile``'s ``options`` do not reach it)."""
        if not self._freeze:
            return nullcontext()
        from torch._inductor import config as inductor_config

        return inductor_config.patch(freezing=True)

    def weight_products(self) -> list[torch.Tensor]:
        """The ``[in, out]`` float matrices a one-row step multiplies by, each once, as the step lays them out: a
        side-by-side group as its one matrix, every other plain linear's weight transposed (a view). What
        ``retnet bench decode`` times alone, to split a step's cost into its matrix products and the rest."""
        groups = [f for fused in self._fused.values() for f in fused if isinstance(f, SideBySide)]
        grouped = {id(m) for g in groups for m in g.modules}
        mats = [g.weight_t for g in groups]
        mats += [m.weight.t() for m in self.model.modules() if plain_linear(m) and id(m) not in grouped]
        return mats

    def _has_kv_cache(self) -> bool:
        core = self.model.model
        return core.shared_kv is not None or len(self._retention_layers) < core.config.num_self_layers

    def __call__(self, ids: torch.Tensor, state: RetNetState) -> tuple[torch.Tensor, RetNetState]:
        if ids.dim() != 2 or ids.shape[1] != 1:
            raise ValueError(f"ids must have shape [B, 1], got {tuple(ids.shape)}")
        if state.batch_size != ids.shape[0]:
            raise ValueError(f"state holds {state.batch_size} rows but ids has batch size {ids.shape[0]}")
        with torch.no_grad(), self._compile_config():
            for m in self._linears:
                # A weight that is a view into a wider matrix (side by side, made by an eager step on this
                # model) gets its own storage again: inductor's freezing folds such a view wrongly.
                w = m.weight
                if not (w.is_contiguous() or w.t().is_contiguous()):
                    w.data = w.data.t().contiguous().t()
            for i, fused in self._fused.items():
                if not fused.current():  # the weights were replaced since: lay them out again
                    self._fused[i] = _fuse_block(self.model.model.layers[i], self._side_by_side)
            position = self._position(state)
            if self.compiled and self.compile_s is None:
                t0 = time.perf_counter()
                out = self._fn(ids, state, position)
                self.compile_s = self._choice_s + time.perf_counter() - t0
                return out
            return self._fn(ids, state, position)

    def _position(self, state: RetNetState) -> _Position:
        core = self.model.model
        positions = state.offset[:, None]
        sin, cos = core.rotary(positions, core.embed_tokens.weight.dtype)  # [B, 1, Dk]
        row_scale = core.decay_row_scale(positions)[:, 0] if core.config.normalize_decay else None
        return _Position(sin, cos, row_scale)

    def _step(
        self, ids: torch.Tensor, state: RetNetState, model: nn.Module, position: _Position
    ) -> tuple[torch.Tensor, RetNetState]:
        core = model.model
        cfg = core.config
        x = core.embed_tokens(ids[:, 0])
        if cfg.embed_scale != 1.0:
            x = x * cfg.embed_scale
        if core.layernorm_embedding is not None:
            x = core.layernorm_embedding(x)
        sin, cos, row_scale = position
        sin_h, cos_h = sin[:, 0, None], cos[:, 0, None]  # [B, 1, Dk]: broadcast over the heads
        turns = None
        # (complex factors in eager steps only: inductor leaves complex products to separate ATen calls)
        if sin.dtype in (torch.float32, torch.float64) and self._key_dim is not None and not self.compiled:
            turn = rotation(sin_h, cos_h)  # each pair's angle, once
            turns = (turn, turn * self._key_dim**-0.5)
        big = self.pack_min_batch is not None and x.shape[0] >= self.pack_min_batch and PackedLinears.applies(x)
        linear: LinearFn = self.packed if big else _call
        if self._freeze and x.shape[0] == 1:  # CPU-compiled one-row step: row dot products (see _row_products)
            linear = _row_products
        new_layers = list(state.layers) if not self.in_place else state.layers
        n_self = cfg.num_self_layers
        for i in range(n_self):
            block = core.layers[i]
            if i in self._retention_layers:
                fused = self._fused[i]
                if big and fused.float_side_by_side():
                    fused = _NOT_FUSED  # large batches: oneDNN-packed weights, module by module
                x, s = _retention_step(
                    block,
                    x,
                    sin_h,
                    cos_h,
                    state.layers[i],
                    row_scale,
                    self.in_place,
                    self.use_operator,
                    self._gammas.get(i),
                    linear,
                    fused,
                    turns,
                    for_inductor=self.compiled and not self.use_operator,
                )
            else:
                y, s = block(x[:, None], sin, cos, state=state.layers[i], mode="recurrent", use_cache=True)
                x = y[:, 0]
            new_layers[i] = s
        shared = state.shared
        if core.shared_kv is not None:
            if shared is None:
                raise ValueError("this YOCO model's state has no shared KV cache (state of another model?)")
            q_start = shared.length
            shared = core.shared_kv(x[:, None], sin, cos, state=shared)
            y = x[:, None]
            for i in range(n_self, len(core.layers)):
                y, _ = core.layers[i](y, sin, cos, mode="recurrent", shared=shared, q_start=q_start)
            x = y[:, 0]
        logits = linear(model.lm_head, core.layer_norm(x))
        if self.in_place:
            state.offset.add_(1)
            state.shared = shared
            return logits, state
        return logits, RetNetState(new_layers, state.offset + 1, shared)


def make_decode_step(
    model: nn.Module,
    *,
    compile: bool = False,
    in_place: bool = False,
    kernel: bool | None = None,
    pack_min_batch: int | None = PACK_MIN_BATCH,
    products: Products = "auto",
) -> DecodeStep:
    """The decode step of ``model`` (see :class:`DecodeStep`); ``compile=True`` wraps it in ``torch.compile``
    (inductor on the CPU; CUDA graphs via ``mode="reduce-overhead"`` on CUDA); ``products``: how a CPU-compiled
    one-row step multiplies (``"auto"``, ``"rows"``, ``"blas"``)."""
    return DecodeStep(
        model, compile=compile, in_place=in_place, kernel=kernel, pack_min_batch=pack_min_batch, products=products
    )
