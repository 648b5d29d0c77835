"""Cost of one command through the local sandbox: median wall time of `true`, and of opening one.

`python -m bench bench_sandbox` (or `python bench/bench_sandbox.py` for a quick print). Measures the
configuration the episode uses (as whatever user runs it: as root that includes the uid drop, the
cgroup join, seccomp and the size-limited tmpfs) and, for the breakdown, with `sandbox.seccomp=false`.
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

RESULT = "sandbox_cpu"
COMMANDS = 60


def _repo(root: Path) -> str:
    root.mkdir(parents=True)
    run = {"cwd": root, "check": True, "capture_output": True}
    subprocess.run(["git", "init", "-q"], **run)  # type: ignore[call-overload]
    (root / "a.py").write_text("x = 1\n")
    subprocess.run(["git", "add", "-A"], **run)  # type: ignore[call-overload]
    subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "c"], **run)  # type: ignore[call-overload]
    return subprocess.run(["git", "rev-parse", "HEAD"], text=True, **run).stdout.strip()  # type: ignore[call-overload]


def measure(**overrides: object) -> dict[str, float]:
    from protege.agent.sandbox import open_sandbox
    from protege.config import SandboxConfig
    from protege.tasks import TaskInstance

    with tempfile.TemporaryDirectory() as tmp:
        base = _repo(Path(tmp) / "o__r")
        diff = "diff --git a/a.py b/a.py\n--- a/a.py\n+++ b/a.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n"
        task = TaskInstance(
            instance_id="o__r-1",
            repo="o/r",
            base_commit=base,
            problem_statement="p",
            patch=diff,
            test_patch=diff,
            FAIL_TO_PASS=["t"],
        )
        opened = time.perf_counter()
        with open_sandbox(SandboxConfig(**overrides), task, Path(tmp)) as sandbox:
            open_s = time.perf_counter() - opened
            times = []
            cpu_before = _children_cpu_s()
            for _ in range(COMMANDS):
                started = time.perf_counter()
                sandbox.run("true")
                times.append(time.perf_counter() - started)
            cpu_ms = (_children_cpu_s() - cpu_before) / COMMANDS * 1000
    return {
        "open_s": round(open_s, 4),
        "true_median_ms": round(statistics.median(times) * 1000, 2),
        "true_cpu_ms": round(cpu_ms, 2),  # user+sys of the command's processes: less load-sensitive
    }


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run() -> dict[str, object]:
    return {"commands": COMMANDS, "default": measure(), "no_seccomp": measure(seccomp=False)}


if __name__ == "__main__":
    print(run())
