"""`make bench` (`python -m bench [NAME ...]`): run every `bench/bench_*.py` (or the named ones) and write
each result to `bench/results/<module.RESULT>.json`, with the machine it ran on.

A benchmark module exposes `RESULT` (the results file's stem) and `run() -> dict`; it measures, the
runner records. GPU-only scripts (`gpu_*.py`) are not run here: run them by hand on a GPU machine.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).parent
RESULTS_DIR = BENCH_DIR / "results"


def machine_info() -> dict:
    """What the numbers depend on: CPU, cores, load, library versions, GPU if any."""
    import torch
    import transformers
    import trl

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": os.getloadavg()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def run_one(name: str) -> Path:
    module = importlib.import_module(f"bench.{name}")
    started = time.time()
    result = module.run()
    record = {
        "benchmark": name,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_s": round(time.time() - started, 2),
        "machine": machine_info(),
        "result": result,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{module.RESULT}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def main(argv: list[str]) -> int:
    names = argv or sorted(p.stem for p in BENCH_DIR.glob("bench_*.py"))
    for name in names:
        path = run_one(name if name.startswith("bench_") else f"bench_{name}")
        print(f"{name}: {path}")
        print(json.dumps(json.loads(path.read_text())["result"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
