"""`make bench` (`python -m bench [NAME ...]`): run every `bench/bench_*.py` (or the named ones) and write
each result to `bench/results/<module.RESULT>.json`, with the machine it ran on, its load before and after,
and the peak memory of the whole process tree (sandboxed processes included).

A benchmark module exposes `RESULT` (the results file's stem) and `run() -> dict`; it measures, the
runner records. Its knobs are the upper-case constants at its top (sizes, repeats); `--set
bench_checkout.OPENS=4` overrides one for a run. GPU-only scripts (`gpu_*.py`) are not run here: run them
by hand on a GPU machine.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path

BENCH_DIR = Path(__file__).parent
RESULTS_DIR = BENCH_DIR / "results"


def benchmarks() -> dict[str, str]:
    """{name: first line of its docstring} of every bench/bench_*.py, read without importing it."""
    found = {}
    for path in sorted(BENCH_DIR.glob("bench_*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        found[path.stem] = doc.strip().splitlines()[0] if doc.strip() else ""
    return found


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


def _memory_cgroup() -> Path | None:
    """This process's cgroup v1 memory directory, or None (v2 only / not readable)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if "memory" in controllers.split(","):
                return Path("/sys/fs/cgroup/memory") / path.lstrip("/")
    return None


@contextlib.contextmanager
def peak_memory() -> Iterator[dict]:
    """Peak memory of this process and everything it starts, sandboxes included: where this process may
    make a v1 memory cgroup (root), it moves into a fresh one for the benchmark (sandboxes' cgroups nest
    under it) and reads `memory.max_usage_in_bytes` (RSS plus page cache and the sandboxes' tmpfs); else the
    largest RSS of this process and of one waited-for child, a lower bound."""
    out: dict = {}
    parent, own = _memory_cgroup(), None
    if parent is not None:
        for stale in parent.glob("protege-bench-*"):  # left by a benchmark that was killed
            if not Path(f"/proc/{stale.name.rsplit('-', 1)[1]}").exists():
                for child in (*(p for p in stale.iterdir() if p.is_dir()), stale):
                    with contextlib.suppress(OSError):
                        child.rmdir()
        with contextlib.suppress(OSError):
            own = parent / f"protege-bench-{os.getpid()}"
            own.mkdir()
            (own / "cgroup.procs").write_text(str(os.getpid()))
    try:
        yield out
    finally:
        if own is not None and (own / "memory.max_usage_in_bytes").exists():
            out["peak_mb"] = round(int((own / "memory.max_usage_in_bytes").read_text()) / 2**20, 1)
            out["how"] = "cgroup v1 memory.max_usage_in_bytes of the benchmark's process tree"
            with contextlib.suppress(OSError):
                (parent / "cgroup.procs").write_text(str(os.getpid()))  # type: ignore[operator]
                own.rmdir()
        else:
            self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            out["peak_mb"] = round(self_mb + child_mb, 1)
            out["how"] = "max RSS of this process + of its largest child (lower bound)"


def _apply_settings(settings: list[str]) -> None:
    for setting in settings:
        target, _, value = setting.partition("=")
        module_name, _, constant = target.rpartition(".")
        module = importlib.import_module(f"bench.{module_name}")
        if not constant.isupper() or not hasattr(module, constant):
            raise SystemExit(f"--set {setting}: {module_name} has no knob {constant}")
        setattr(module, constant, type(getattr(module, constant))(ast.literal_eval(value)))


def run_one(name: str) -> Path:
    module = importlib.import_module(f"bench.{name}")
    started = time.time()
    load_before = os.getloadavg()
    with peak_memory() as peak:
        result = module.run()
    record = {
        "benchmark": name,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_s": round(time.time() - started, 2),
        "machine": machine_info(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "peak_memory": peak,
        "result": result,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{module.RESULT}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name:<22} {line}" for name, line in benchmarks().items())
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run benchmarks; each writes bench/results/<name>.json (machine, load, peak memory, result).",
        epilog=f"benchmarks:\n{listing}\n\nKnobs are each module's upper-case constants (see its docstring).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "names", nargs="*", metavar="NAME", help="benchmarks to run (default: all), with or without bench_"
    )
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("--set", action="append", default=[], metavar="MODULE.KNOB=VALUE", help="override a knob")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    known = benchmarks()
    if args.list:
        print("\n".join(f"{name:<22} {line}" for name, line in known.items()))
        return 0
    names = [n if n.startswith("bench_") else f"bench_{n}" for n in args.names] or list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    _apply_settings(args.set)
    for name in names:
        path = run_one(name)
        print(f"{name}: {path}")
        print(json.dumps(json.loads(path.read_text())["result"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
