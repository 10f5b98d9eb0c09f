"""The training loop: data, tokenizer, model, AdamW + warmup/cosine, accumulation, autocast, evaluation,
atomic checkpoints with exact resume, metrics, and the model directory at the end.

The run folder (``TrainConfig.out``) is a model directory: ``config.json`` + ``model.safetensors`` +
``tokenizer.json`` (loadable with ``RetNetForCausalLM.from_pretrained``), plus ``training.json``,
``metrics.csv``, ``loss.png`` and ``checkpoints/`` (the resumable training state).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from retnet.data.batching import DataPosition, WindowSampler, encode_tensor, num_windows
from retnet.data.corpus import CorpusError, load_corpus, split_corpus
from retnet.data.tokenizers import Tokenizer, paragraphs
from retnet.models import RetNetConfig, RetNetForCausalLM
from retnet.models.directory import (
    TOKENIZER_FILE,
    TRAINING_INFO_FILE,
    atomic_write_json,
    remove_leftover_temp_files,
    write_tokenizer_config,
)
from retnet.training import checkpoint as ckpt
from retnet.training import distributed as dist_utils
from retnet.training.config import TrainConfig, build_model_config
from retnet.training.errors import TrainError
from retnet.training.evaluate import EvalResult, evaluate
from retnet.training.memory import check_fits
from retnet.training.metrics import MetricsLog, plot_losses
from retnet.training.optim import param_groups
from retnet.training.schedule import warmup_cosine


@dataclass
class TrainResult:
    """What a run achieved (rank 0's view; metrics are global)."""

    steps: int
    final_eval: EvalResult | None
    elapsed_s: float
    tokens: int
    losses: list[float] = field(default_factory=list)  # train loss of every step run in this call
    compile_s: float | None = None  # with cfg.compile: the first step's time beyond a compiled step's


def check_writable(out: Path) -> None:
    """Fail early, creating nothing, when the output folder cannot be created or written."""
    if out.exists() and not out.is_dir():
        raise TrainError(f"output folder {str(out)!r} exists and is not a folder")
    probe_dir = out
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise TrainError(f"output folder {str(out)!r} cannot be created: {str(probe_dir)!r} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".retnet-write-test-", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise TrainError(f"output folder {str(out)!r} is not writable: {exc.strerror or exc}") from None


def pick_threads(requested: int, processes: int = 1) -> int:
    """CPU threads: ``requested`` if > 0, else the cores not already busy (1-minute load average), >= 1.

    Oversubscribed cores hurt badly: OpenMP threads spin-wait for each other, so a thread that shares its
    core with another busy process slows every step down.
    """
    if requested > 0:
        return requested
    cores = max(1, (os.cpu_count() or 1) // max(1, processes))
    try:
        load = os.getloadavg()[0] / max(1, processes)
    except OSError:
        load = 0.0
    return max(1, min(cores, int(cores - load + 0.5)))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: ``auto`` is bf16 on CUDA when supported, else fp16 on CUDA, else none (fp32)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def prepare_tokenizer(cfg: TrainConfig, train_text: str, resume_dir: Path | None) -> Tokenizer:
    """The run's tokenizer: reloaded when resuming, else bytes or a BPE trained on the training split."""
    if resume_dir is not None:
        return Tokenizer.load(resume_dir)
    if cfg.tokenizer == "byte":
        return Tokenizer.byte()
    return Tokenizer.train_bpe(paragraphs(train_text), cfg.vocab_size)


def _log(info: dist_utils.DistInfo, msg: str, quiet: bool) -> None:
    if info.is_main and not quiet:
        print(msg, flush=True)


def train(
    cfg: TrainConfig,
    *,
    resume: str | None = None,
    stop_after: int | None = None,
    quiet: bool = False,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Run (or resume) training as configured.

    ``resume``: ``"latest"`` (the newest checkpoint of ``cfg.out``) or a checkpoint file path.
    ``stop_after``: stop after this global step as if interrupted (for tests and time-boxed runs): a
    checkpoint is written there, but not the final model.
    """
    cfg.validate()
    if stop_after is not None and stop_after < 1:
        raise TrainError(f"--stop-after must be >= 1, got {stop_after}")
    try:
        info = dist_utils.setup(cfg.device)
    except dist_utils.DeviceError as exc:
        raise TrainError(f"device {exc}") from None
    # the model's shape and size are checked now, not after the tokenizer is trained
    check_fits(cfg, cfg.vocab_size if cfg.tokenizer == "bpe" else 256, info.device, info.world_size)
    if info.device.type == "cpu":
        torch.set_num_threads(pick_threads(cfg.threads, info.world_size))
    out = Path(cfg.out)
    t_setup = time.perf_counter()

    # 1. Everything that can fail on user input, before writing anything.
    resume_path: Path | None = None
    payload: dict[str, Any] | None = None
    if resume is not None:
        resume_path = ckpt.latest_checkpoint(out) if resume == "latest" else Path(resume)
        if resume_path is None:
            raise TrainError(f"--resume: no checkpoint in {str(out / ckpt.CHECKPOINT_DIR)!r}")
        payload = ckpt.load_checkpoint(resume_path)
        if not (resume_path.parent.parent / TOKENIZER_FILE).is_file():
            raise TrainError(f"--resume: no {TOKENIZER_FILE} next to checkpoint {str(resume_path)!r}")
        if stop_after is not None and stop_after <= int(payload["step"]):
            raise TrainError(f"--stop-after {stop_after} is not after the checkpoint's step {int(payload['step'])}")
    if info.is_main:
        check_writable(out)
    try:
        corpus = load_corpus(cfg.data or None)
    except CorpusError as exc:
        raise TrainError(str(exc)) from None
    train_text, val_text = split_corpus(corpus, cfg.val_fraction)
    if info.is_main or resume_path is not None or cfg.tokenizer == "byte":
        tokenizer = prepare_tokenizer(cfg, train_text, resume_path.parent.parent if resume_path else None)
    if info.enabled and resume_path is None and cfg.tokenizer == "bpe":  # every rank uses rank 0's BPE
        from tokenizers import Tokenizer as HFTokenizer

        text = dist_utils.broadcast_object(tokenizer.hf.to_str() if info.is_main else None, info)
        tokenizer = Tokenizer(HFTokenizer.from_str(text), "bpe")
    train_tokens = encode_tensor(tokenizer, train_text)
    val_tokens = encode_tensor(tokenizer, val_text)
    for split, toks in (("training", train_tokens), ("validation", val_tokens)):
        if num_windows(toks.numel(), cfg.seq_len) < 1:
            raise TrainError(
                f"corpus {', '.join(corpus.sources)!r} is too small: its {split} split has {toks.numel()} tokens, "
                f"fewer than one sequence of seq_len {cfg.seq_len} + 1"
            )
    model_config = build_model_config(cfg, tokenizer.vocab_size)
    if payload is not None:
        ckpt.check_same_model(payload, model_config.to_dict(), resume_path)
    _log(info, f"corpus: {corpus.describe()}; split {len(train_text):,} / {len(val_text):,} characters", quiet)
    _log(
        info,
        f"tokenizer: {tokenizer.describe()}; {train_tokens.numel():,} training / {val_tokens.numel():,} validation"
        f" tokens ({len(train_text.encode()) / max(1, train_tokens.numel()):.2f} bytes/token)",
        quiet,
    )

    # 2. Model, optimizer, schedule.
    torch.manual_seed(cfg.seed)
    model = RetNetForCausalLM(model_config).to(info.device)
    n_params = sum(p.numel() for p in model.parameters())
    shape = ", ".join(
        f"{k}={getattr(model_config, k)}" for k in ("hidden_size", "num_layers", "num_heads", "value_dim", "ffn_dim")
    )
    _log(
        info,
        f"model: {cfg.model} preset with {shape}, vocab {model_config.vocab_size} ({n_params:,} parameters)",
        quiet,
    )
    model.model.gradient_checkpointing = cfg.checkpoint_activations
    model.model.checkpoint_segment = cfg.checkpoint_segment
    model = dist_utils.wrap(model, info, fsdp=cfg.fsdp)
    # Compiled for the training steps only; evaluation (no gradients, other batch sizes) runs eagerly.
    step_model = torch.compile(model) if cfg.compile else model
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        fused=info.device.type == "cuda" or None,
    )
    scheduler = warmup_cosine(
        optimizer, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps, min_lr_ratio=cfg.min_lr_ratio
    )
    amp_dtype = autocast_dtype(cfg.precision, info.device)
    scaler = torch.amp.GradScaler(info.device.type, enabled=amp_dtype == torch.float16)
    start_step, tokens_seen, elapsed_before = 0, 0, 0.0
    position = DataPosition()
    if payload is not None:
        ckpt.restore(payload, model, optimizer, scheduler, scaler)
        start_step = int(payload["step"])
        position = DataPosition.from_dict(payload["data"])
        tokens_seen = int(payload["extra"].get("tokens", 0))
        elapsed_before = float(payload["extra"].get("elapsed_s", 0.0))
        _log(info, f"resumed from {resume_path} at step {start_step}", quiet)
    sampler = WindowSampler(train_tokens, cfg.seq_len, cfg.seed, position)
    byte_lengths = torch.tensor(tokenizer.byte_lengths(), dtype=torch.long)

    # 3. Files of the run (rank 0): tokenizer and settings first, so a checkpoint is always usable.
    if info.is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrainError(f"output folder {str(out)!r} cannot be created: {exc.strerror or exc}") from None
        remove_leftover_temp_files(out)  # a run killed mid-save left them (checkpoint saves clean their own folder)
        if payload is None:
            for _, old in ckpt.list_checkpoints(out):
                old.unlink()
            tokenizer.save(out)
            write_tokenizer_config(out)  # tokenizer_config.json: AutoTokenizer loads it as a PreTrainedTokenizerFast
        _write_training_info(out, cfg, model_config, tokenizer, corpus.describe(), n_params, None)
    dist_utils.barrier(info)
    metrics = MetricsLog(out, resume_step=start_step if payload else None) if info.is_main else None

    def run_eval(max_batches: int | None) -> EvalResult:
        res = evaluate(
            model,
            val_tokens,
            byte_lengths,
            seq_len=cfg.seq_len,
            batch_size=cfg.eval_batch_size,
            max_batches=max_batches,
            device=info.device,
            mode=cfg.retention_mode,
            autocast_dtype=amp_dtype,
            shard=(info.rank, info.world_size),
        )
        nll, n, b = dist_utils.all_reduce_sum([res.nll, res.tokens, res.bytes], info)
        return EvalResult(nll=nll, tokens=int(n), bytes=int(b))

    def save(step: int) -> None:
        model_state, optim_state = ckpt.gather_state(model, optimizer)
        if info.is_main:
            ckpt.save_checkpoint(
                out,
                step=step,
                model_state=model_state,
                optimizer_state=optim_state,
                scheduler=scheduler,
                scaler=scaler,
                data_position=sampler.position.to_dict(),
                model_config=model_config.to_dict(),
                train_config=cfg.to_dict(),
                extra={"tokens": tokens_seen, "elapsed_s": elapsed_before + time.perf_counter() - t_start},
                keep=cfg.keep_checkpoints,
            )
        dist_utils.barrier(info)

    # 4. The loop.
    global_batch = cfg.batch_size * cfg.grad_accum * info.world_size
    last = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    _log(
        info,
        f"training {cfg.steps} steps x {global_batch} sequences x {cfg.seq_len} tokens on {info.device}"
        f" ({info.world_size} process{'es' if info.world_size > 1 else ''}{', FSDP' if cfg.fsdp else ''}"
        f", {amp_dtype or 'fp32'}, {torch.get_num_threads()} CPU threads); setup {time.perf_counter() - t_setup:.1f}s",
        quiet,
    )
    bar = _progress_bar(start_step, cfg.steps, enabled=progress and info.is_main and not quiet)
    losses: list[float] = []
    step_times: list[float] = []
    final_eval: EvalResult | None = None
    t_start = time.perf_counter()
    model.train()
    try:
        for step in range(start_step, last):
            t0 = time.perf_counter()
            batch = sampler.next_batch(global_batch)
            mine = batch[
                info.rank * cfg.batch_size * cfg.grad_accum : (info.rank + 1) * cfg.batch_size * cfg.grad_accum
            ]
            loss_sum = 0.0
            for micro in range(cfg.grad_accum):
                rows = mine[micro * cfg.batch_size : (micro + 1) * cfg.batch_size].to(info.device, non_blocking=True)
                sync = micro == cfg.grad_accum - 1
                ctx = model.no_sync() if (info.enabled and not sync and hasattr(model, "no_sync")) else _null()
                with ctx:
                    with torch.autocast(
                        info.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
                    ):
                        logits = step_model(rows[:, :-1], mode=cfg.retention_mode).logits
                    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))
                    scaler.scale(loss / cfg.grad_accum).backward()
                loss_sum += float(loss.detach())
            scaler.unscale_(optimizer)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            (loss_total,) = dist_utils.all_reduce_sum([loss_sum / cfg.grad_accum], info)
            step_loss = loss_total / info.world_size
            if not math.isfinite(step_loss):
                raise TrainError(f"training diverged at step {step + 1}: loss is {step_loss} (try a lower --lr)")
            losses.append(step_loss)
            tokens_seen += global_batch * cfg.seq_len
            dt = time.perf_counter() - t0
            step_times.append(dt)
            done = step + 1
            row: dict[str, Any] = {
                "step": done,
                "tokens": tokens_seen,
                "lr": lr,
                "loss": step_loss,
                "tokens_per_s": global_batch * cfg.seq_len / dt,
                "elapsed_s": elapsed_before + time.perf_counter() - t_start,
            }
            if done % cfg.eval_interval == 0 or done == cfg.steps:
                res = run_eval((cfg.final_eval_batches or None) if done == cfg.steps else cfg.eval_batches)
                row.update(val_loss=res.loss, val_bpb=res.bits_per_byte)
                if done == cfg.steps:
                    final_eval = res
                msg = (
                    f"step {done}: train loss {step_loss:.4f}, val loss {res.loss:.4f} nats/token, "
                    f"{res.bits_per_byte:.4f} bits/byte, {tokens_seen / max(1e-9, row['elapsed_s']):.0f} tokens/s"
                )
                if bar is not None:
                    bar.write(msg)
                else:
                    _log(info, msg, quiet)
            if metrics is not None:
                metrics.log(row)
            if bar is not None:
                bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{row['tokens_per_s']:.0f}", refresh=False)
                bar.update(1)
            if on_step is not None:
                on_step(done, step_loss)
            if done % cfg.checkpoint_interval == 0 or done == last:
                save(done)
    finally:
        if bar is not None:
            bar.close()
        if metrics is not None:
            metrics.close()

    elapsed = elapsed_before + time.perf_counter() - t_start
    compile_s = compile_seconds(step_times) if cfg.compile else None
    if compile_s is not None:
        _log(
            info,
            f"torch.compile: {compile_s:.1f}s of compilation in the first step; compiled steps "
            f"{global_batch * cfg.seq_len / min(step_times[1:]):.0f} tokens/s",
            quiet,
        )
    if last == cfg.steps:
        _save_model_dir(out, model, optimizer, model_config, info)
        if info.is_main:
            _write_training_info(out, cfg, model_config, tokenizer, corpus.describe(), n_params, final_eval, elapsed)
            plot_losses(out)
            if final_eval is not None:
                _log(
                    info,
                    f"done in {elapsed:.0f}s: validation {final_eval.loss:.4f} nats/token, "
                    f"{final_eval.bits_per_byte:.4f} bits/byte (perplexity {final_eval.perplexity:.2f}); "
                    f"model saved to {out}",
                    quiet,
                )
    return TrainResult(
        steps=last, final_eval=final_eval, elapsed_s=elapsed, tokens=tokens_seen, losses=losses, compile_s=compile_s
    )


def compile_seconds(step_times: list[float]) -> float | None:
    """Compilation time: the first step's time beyond the fastest later step (None with fewer than 2 steps)."""
    if len(step_times) < 2:
        return None
    return max(0.0, step_times[0] - min(step_times[1:]))


def _null():
    return contextlib.nullcontext()


def _progress_bar(start: int, total: int, *, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)


def _save_model_dir(out: Path, model: nn.Module, optimizer, model_config: RetNetConfig, info) -> None:
    """Write config.json + model.safetensors (rank 0; FSDP shards are gathered first)."""
    state, _ = ckpt.gather_state(model, optimizer)
    if info.is_main:
        plain = dist_utils.unwrap(model)
        if info.enabled:  # a fresh unsharded copy to save from
            plain = RetNetForCausalLM(model_config)
            plain.load_state_dict(state)
        plain.save_pretrained(str(out))
    dist_utils.barrier(info)


def _write_training_info(
    out: Path,
    cfg: TrainConfig,
    model_config: RetNetConfig,
    tokenizer: Tokenizer,
    corpus: str,
    n_params: int,
    final_eval: EvalResult | None,
    elapsed: float | None = None,
) -> None:
    info = {
        "train_config": cfg.to_dict(),
        "model_config": model_config.to_dict(),
        "parameters": n_params,
        "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size},
        "corpus": corpus,
        "final_validation": final_eval.to_dict() if final_eval else None,
        "elapsed_s": elapsed,
        "torch": torch.__version__,
    }
    atomic_write_json(out / TRAINING_INFO_FILE, info)
