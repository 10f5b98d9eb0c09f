"""Training metrics: a CSV file (always), TensorBoard (when installed) and a loss-curve PNG at the end."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.csv"
PLOT_FILE = "loss.png"
FIELDS = ["step", "tokens", "lr", "loss", "val_loss", "val_bpb", "tokens_per_s", "elapsed_s"]


class MetricsLog:
    """Appends one CSV row per step; on resume, rows after the checkpoint's step are dropped first (and
    TensorBoard, when installed, purges its events after that step the same way)."""

    def __init__(self, run_dir: str | Path, *, resume_step: int | None, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        rows = read_metrics(self.path) if resume_step is not None and self.path.is_file() else []
        rows = [r for r in rows if resume_step is not None and int(r["step"]) <= resume_step]
        with open(self.path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=FIELDS)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: r.get(k, "") for k in FIELDS})
        self._fh = open(self.path, "a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._fh, fieldnames=FIELDS)
        purge = None if resume_step is None else resume_step + 1
        self._tb = _tensorboard_writer(Path(run_dir) / "tensorboard", purge) if tensorboard else None

    def log(self, row: dict[str, Any]) -> None:
        self._writer.writerow({k: _fmt(row.get(k)) for k in FIELDS})
        self._fh.flush()
        if self._tb is not None:
            for key in ("loss", "val_loss", "val_bpb", "lr", "tokens_per_s"):
                if row.get(key) is not None:
                    self._tb.add_scalar(key, row[key], int(row["step"]))

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()


def _fmt(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return value


def _tensorboard_writer(path: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional; torch raises ImportError when the package is absent
        return None
    return SummaryWriter(str(path), purge_step=purge_step)


def read_metrics(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def plot_losses(run_dir: str | Path) -> Path | None:
    """Draw train loss and validation loss (nats/token) against step into ``loss.png``."""
    rows = read_metrics(Path(run_dir) / METRICS_FILE)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in ("", None)]
        pts = [(s, v) for s, v in pts if math.isfinite(v)]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(*series("loss"), label="train loss", linewidth=1, alpha=0.8)
    vs, vl = series("val_loss")
    if vs:
        ax.plot(vs, vl, "o-", label="validation loss")
        bs, bb = series("val_bpb")
        if bb:
            ax.set_title(f"final validation: {vl[-1]:.3f} nats/token, {bb[-1]:.3f} bits/byte")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(run_dir) / PLOT_FILE
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)
    return out
