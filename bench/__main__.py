"""Run every benchmark module (or those named on the command line) and print their results as JSON."""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path

import bench


def main(argv: list[str]) -> int:
    names = argv or sorted(m.name for m in pkgutil.iter_modules(bench.__path__)
                           if hasattr(importlib.import_module(f"bench.{m.name}"), "run"))
    results = {}
    out_dir = Path("bench/results")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        started = time.perf_counter()
        print(f"== bench.{name}", file=sys.stderr, flush=True)
        results[name] = importlib.import_module(f"bench.{name}").run()
        results[name]["bench_wall_seconds"] = round(time.perf_counter() - started, 2)
        print(json.dumps({name: results[name]}, indent=2, default=str), flush=True)
    (out_dir / "latest.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
