"""Training and evaluating the classifiers of :mod:`retnet.models.encoder` on the embedded tasks.

``run_task`` is what ``retnet train --task genre|digits`` calls: it builds the model (``arch="retnet"`` or the
``"transformer"`` baseline of equal size), trains with AdamW and a warmup + cosine schedule, evaluates on the
held-out split and writes the model directory plus ``metrics.json``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from retnet.data.tasks import TaskData, load_task
from retnet.models.baselines import TransformerTextClassifier, ViTClassifier
from retnet.models.directory import atomic_write_json, read_config_json
from retnet.models.encoder import (
    EncoderConfig,
    build_encoder,
    load_with_config,
    save_encoder,
)
from retnet.models.io import save_model_dir, state_dict_for_saving

ARCHS = ("retnet", "transformer")

# Per task: model shape and training defaults sized for a 2-core CPU.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "genre": dict(
        config=dict(kind="text", num_labels=6, hidden_size=96, num_layers=2, num_heads=4, value_dim=192, ffn_dim=192),
        steps=300,
        batch_size=16,
        lr=2e-3,
        task_kwargs=dict(passage_bytes=256),
    ),
    "digits": dict(
        config=dict(
            kind="vision",
            num_labels=10,
            hidden_size=64,
            num_layers=3,
            num_heads=4,
            value_dim=128,
            ffn_dim=128,
            image_size=8,
            patch_size=2,
            dropout=0.1,
        ),
        steps=800,
        batch_size=64,
        lr=3e-3,
        task_kwargs={},
    ),
}


@dataclass
class TaskResult:
    task: str
    arch: str
    parameters: int
    accuracy: float
    balanced_accuracy: float
    train_seconds: float
    steps: int
    final_loss: float
    extra: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__}


def build_classifier(task: str, arch: str, **overrides: Any) -> torch.nn.Module:
    if task not in TASK_DEFAULTS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASK_DEFAULTS)}")
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    config = EncoderConfig(**{**TASK_DEFAULTS[task]["config"], **overrides})
    if arch == "retnet":
        return build_encoder(config)
    return TransformerTextClassifier(config) if config.kind == "text" else ViTClassifier(config)


def _model_inputs(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"input_ids": x} if model.config.kind == "text" else {"pixel_values": x}


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: TaskData, batch_size: int = 64) -> dict[str, Any]:
    """Accuracy, balanced accuracy (mean per-class recall) and, for grouped data, per-group majority vote."""
    model.eval()
    preds = torch.cat(
        [
            model(**_model_inputs(model, data.inputs[i : i + batch_size])).logits.argmax(-1)
            for i in range(0, len(data.labels), batch_size)
        ]
    )
    correct = preds == data.labels
    recalls = [
        float(correct[data.labels == c].float().mean())
        for c in range(len(data.label_names))
        if (data.labels == c).any()
    ]
    result: dict[str, Any] = {
        "accuracy": float(correct.float().mean()),
        "balanced_accuracy": sum(recalls) / len(recalls),
        "n": len(data.labels),
    }
    if data.groups:
        votes: dict[str, list[int]] = {}
        truth: dict[str, int] = {}
        for g, p, y in zip(data.groups, preds.tolist(), data.labels.tolist()):
            votes.setdefault(g, []).append(p)
            truth[g] = y
        wins = [max(set(v), key=v.count) == truth[g] for g, v in votes.items()]
        result["group_accuracy"] = sum(wins) / len(wins)
        result["groups"] = len(wins)
    return result


def train_classifier(
    model: torch.nn.Module,
    train: TaskData,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    warmup: int | None = None,
    weight_decay: float = 0.05,
    progress: bool = False,
) -> list[float]:
    """AdamW + warmup/cosine on class-balanced cross-entropy; returns the per-step losses."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = warmup if warmup is not None else max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    counts = torch.bincount(train.labels, minlength=len(train.label_names)).float()
    weights = counts.sum() / (counts.clamp_min(1) * len(counts))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="train", unit="step")
    losses = []
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(train.labels), (batch_size,), generator=gen)
        out = model(**_model_inputs(model, train.inputs[idx]))
        loss = F.cross_entropy(out.logits.float(), train.labels[idx], weight=weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    if bar is not None:
        bar.close()
    return losses


def run_task(
    task: str,
    arch: str = "retnet",
    *,
    out_dir: str | Path | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    progress: bool = False,
    model_overrides: dict[str, Any] | None = None,
) -> TaskResult:
    """Train ``arch`` on ``task``, evaluate on the test split, save to ``out_dir`` (if given)."""
    defaults = TASK_DEFAULTS.get(task)
    if defaults is None:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASK_DEFAULTS)}")
    torch.manual_seed(seed)
    model = build_classifier(task, arch, **(model_overrides or {}))
    train = load_task(task, "train", **defaults["task_kwargs"])
    test = load_task(task, "test", **defaults["task_kwargs"])
    steps = steps or defaults["steps"]
    t0 = time.perf_counter()
    losses = train_classifier(
        model,
        train,
        steps=steps,
        batch_size=batch_size or defaults["batch_size"],
        lr=lr or defaults["lr"],
        seed=seed,
        progress=progress,
    )
    elapsed = time.perf_counter() - t0
    metrics = evaluate(model, test)
    result = TaskResult(
        task=task,
        arch=arch,
        parameters=sum(p.numel() for p in model.parameters()),
        accuracy=metrics.pop("accuracy"),
        balanced_accuracy=metrics.pop("balanced_accuracy"),
        train_seconds=elapsed,
        steps=steps,
        final_loss=sum(losses[-20:]) / len(losses[-20:]),
        extra={**metrics, "train_examples": len(train.labels)},
    )
    if out_dir is not None:
        out = Path(out_dir)
        save_classifier(model, out, arch)
        atomic_write_json(out / "metrics.json", {**result.to_dict(), "task_kwargs": defaults["task_kwargs"]})
    return result


def save_classifier(model: torch.nn.Module, directory: str | Path, arch: str) -> Path:
    """Save a RetNet classifier (``save_encoder``) or a baseline (its config marked ``"baseline": arch``)."""
    if arch == "retnet":
        return save_encoder(model, directory)
    return save_model_dir(directory, state_dict_for_saving(model), {"baseline": arch, **model.config.to_dict()})


def load_classifier(directory: str | Path) -> torch.nn.Module:
    """Load what :func:`save_classifier` wrote; errors name the file, field or tensor."""
    directory = Path(directory)
    raw = read_config_json(directory)
    if raw.pop("baseline", None) is None:
        return load_with_config(directory, raw, build_encoder)
    return load_with_config(
        directory,
        raw,
        lambda config: TransformerTextClassifier(config) if config.kind == "text" else ViTClassifier(config),
    )
