"""One case in its own process:
``python -m retnet_benchmarks.worker [--threads N] [--baseline-rss] [--malloc M] module:function JSON``.

Prints the function's dict result (plus the process's peak RSS, and with ``--baseline-rss`` its RSS right
after importing the target module) on a line starting with the result marker.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

import torch

from retnet.runtime.malloc import MALLOC_MODES, configure
from retnet_benchmarks.measure import RESULT_MARKER, current_rss, peak_rss


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m retnet_benchmarks.worker")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in this process")
    parser.add_argument("--baseline-rss", action="store_true", help="report RSS after importing the target")
    parser.add_argument("--malloc", choices=sorted(MALLOC_MODES), default="retain", help="glibc setting")
    parser.add_argument("target", help="module:function")
    parser.add_argument("kwargs", help="the function's keyword arguments as a JSON object")
    opts = parser.parse_args(argv)
    if ":" not in opts.target:
        parser.error(f"target must be module:function, got {opts.target!r}")
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    configure(opts.malloc)  # as `retnet train --malloc` does (retain: repeated passes reuse memory)
    module, func = opts.target.split(":", 1)
    fn = getattr(importlib.import_module(module), func)
    baseline = current_rss()
    result = dict(fn(**json.loads(opts.kwargs)))
    result.setdefault("process_peak_rss", peak_rss())
    if opts.baseline_rss:
        result.setdefault("baseline_rss", baseline)
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
