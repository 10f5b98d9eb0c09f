"""Writing benchmark results: JSON, a Markdown table and a PNG chart, with the machine and command."""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from retnet.models.directory import atomic_write, atomic_write_json, atomic_write_text
from retnet.runtime.malloc import describe as malloc_describe

DEFAULT_OUT_DIR = Path("docs/benchmarks")


def machine_info() -> dict[str, Any]:
    """What produced the numbers: CPU/GPU, core count, library versions."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "device": "cpu",
        "malloc": malloc_describe(),
    }
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["processor"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["device"] = "cuda"
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    for name in ("transformers", "triton"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            pass
    return info


def command_line() -> str:
    """The command as the user typed it (``retnet bench ...``)."""
    argv = list(sys.argv)
    prog = Path(argv[0]).name if argv else "retnet"
    if prog in ("__main__.py", "-m", "-c") or prog.startswith("python"):
        prog = "retnet"
    return " ".join([prog, *argv[1:]])


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub Markdown table; floats get 4 significant digits."""
    if not rows:
        return "_no rows_\n"
    columns = list(columns or rows[0].keys())

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_report(
    name: str,
    *,
    title: str,
    rows: Sequence[dict[str, Any]],
    out_dir: str | Path = DEFAULT_OUT_DIR,
    columns: Sequence[str] | None = None,
    summary: dict[str, Any] | None = None,
    notes: str = "",
    chart: Any = None,
    data: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``<name>.json``, ``<name>.md`` and (if ``chart`` is a matplotlib Figure) ``<name>.png``.

    ``summary`` holds the headline figures (ratios, goals met); ``notes`` is Markdown shown under the table;
    ``data`` (e.g. a time series) goes into the JSON only.
    """
    out = Path(out_dir)
    meta = {"command": command_line(), "machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    payload = {"name": name, "title": title, **meta, "summary": summary or {}, "rows": list(rows)}
    if data:
        payload["data"] = data
    paths = {"json": out / f"{name}.json", "md": out / f"{name}.md"}
    atomic_write_json(paths["json"], payload)
    m = meta["machine"]
    md = [f"# {title}", "", f"Command: `{meta['command']}`", ""]
    md.append(
        f"Machine: {m.get('processor')} ({m.get('cpu_count')} cores, {m.get('torch_threads')} torch threads)"
        + (f", GPU {m['gpu']}" if "gpu" in m else "")
        + f"; torch {m['torch']}"
        + (f", transformers {m['transformers']}" if "transformers" in m else "")
        + f"; {meta['date']}"
    )
    md.append("")
    if summary:
        md += ["## Summary", "", markdown_table([{"metric": k, "value": v} for k, v in summary.items()]), ""]
    md += ["## Results", "", markdown_table(rows, columns)]
    if chart is not None:
        paths["png"] = out / f"{name}.png"
        atomic_write(paths["png"], lambda tmp: chart.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
        import matplotlib.pyplot as plt

        plt.close(chart)  # pyplot keeps every figure until closed: a long run writes many
        md += ["", f"![{title}]({name}.png)"]
    if notes:
        md += ["", notes.strip()]
    atomic_write_text(paths["md"], "\n".join(md) + "\n")
    return paths


def subplots(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """``matplotlib.pyplot.subplots`` on the file-only Agg backend: a chart is written by :func:`write_report`
    (which then closes it), never shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def style_log_axes(axes: Sequence[Any], xlabel: str, ylabels: Sequence[str]) -> None:
    """Length-sweep charts: log-2 x and log y, labels and grid on each axis, and a legend on the first when
    it has labelled lines (none when every case was skipped)."""
    for ax, ylabel in zip(axes, ylabels):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend()
