"""``python -m retnet.benchmarks.worker module:function JSON``: one benchmark case in its own process.

Prints the function's dict result (plus the process's peak RSS) on a line starting with the result marker.
"""

from __future__ import annotations

import importlib
import json
import sys

from retnet.benchmarks.measure import RESULT_MARKER, peak_rss


def main(argv: list[str]) -> int:
    if len(argv) != 2 or ":" not in argv[0]:
        print("usage: python -m retnet.benchmarks.worker module:function JSON", file=sys.stderr)
        return 2
    module, func = argv[0].split(":", 1)
    fn = getattr(importlib.import_module(module), func)
    result = dict(fn(**json.loads(argv[1])))
    result.setdefault("process_peak_rss", peak_rss())
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
