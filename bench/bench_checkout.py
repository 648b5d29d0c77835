"""Sandbox open and grading through the checkout cache (protege.agent.sandbox.checkouts), local backend.

(a) Open vs repository size: filler repositories of 10 / 1,000 / 10,000 files. Per size: the first open
    (a cache miss: `git fetch` of base_commit's history into the cache, what every open cost before the
    cache, so it is the floor this run compares with) and OPENS warm opens after one warm-up open (reported
    apart); latency percentiles of open and of close.
(b) Open vs workers: 1 / 2 / 4 threads opening and closing sandboxes on the 10k-file repository, OPENS per
    thread, the order of the worker counts alternated over two rounds; opens/s and open latency.
(c) Demo repositories: the first open and the median warm open of each.
(d) Grading vs the task's own test command, per demo task: `protege.grading.grade` of the gold patch and of
    the empty patch with its tests run (what `protege tasks verify` does) against the task's test command
    (the eval script's line between swebench's test-output markers) run by host Python in a plain checkout
    with the test patch, on the gold tree and on the base tree. Medians of GRADE_REPEATS after a warm-up.

As root, sandboxes overlay the cached checkout (`placement: overlay`); as another user they copy it.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.synthetic import filler_repo

RESULT = "checkout_cpu"
SIZES = (10, 1_000, 10_000)
"""Files in the filler repositories of (a)."""
OPENS = 8
"""Warm opens measured per size (a) and per thread (b)."""
WORKERS = (1, 2, 4)
GRADE_REPEATS = 2
"""Measured gradings (and test-command runs) per demo task and patch, after one warm-up each."""


def percentiles(values: list[float], scale: float = 1000.0) -> dict[str, float]:
    """p50 / p90 / max (and the count) of values, times `scale` (ms by default)."""
    ordered = sorted(values)
    if not ordered:
        return {}
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered) * scale, 2),
        "p90": round(p90 * scale, 2),
        "max": round(ordered[-1] * scale, 2),
    }


def _task(repo: str, base: str) -> Any:
    from protege.tasks import TaskInstance

    diff = "diff --git a/a.py b/a.py\n--- a/a.py\n+++ b/a.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n"
    return TaskInstance(
        instance_id=f"{repo.replace('/', '__')}-1",
        repo=repo,
        base_commit=base,
        problem_statement="p",
        patch=diff,
        test_patch=diff,
        FAIL_TO_PASS=["t"],
    )


def _timed_open(cfg: Any, task: Any, repos: Path) -> tuple[float, float, str, float]:
    """(open s, close s, placement, open-to-first-command s): the persistent shell boots in the
    background, so a sandbox is usable at its first command's answer, which the last figure includes."""
    from protege.agent.sandbox import open_sandbox

    started = time.perf_counter()
    sandbox = open_sandbox(cfg, task, repos)
    opened = time.perf_counter() - started
    sandbox.run("true")
    usable = time.perf_counter() - started
    placement = sandbox._held.placed
    started = time.perf_counter()
    sandbox.close()
    return opened, time.perf_counter() - started, placement, usable


def open_series(cfg: Any, task: Any, repos: Path, opens: int) -> dict[str, Any]:
    """First open (cache miss), one warm-up, then `opens` measured opens."""
    first, _, placement, first_usable = _timed_open(cfg, task, repos)
    warmup, _, _, _ = _timed_open(cfg, task, repos)
    timed = [_timed_open(cfg, task, repos) for _ in range(opens)]
    return {
        "placement": placement,
        "first_open_cache_miss_s": round(first, 3),
        "warmup_open_s": round(warmup, 4),
        "open_to_first_command_ms": percentiles([t[3] for t in timed]),
        "open_ms": percentiles([t[0] for t in timed]),
        "close_ms": percentiles([t[1] for t in timed]),
        "first_open_to_first_command_s": round(first_usable, 3),
        "warm_vs_miss": round(statistics.median(t[0] for t in timed) / first, 4),
    }


def by_size(root: Path, cfg: Any) -> dict[str, Any]:
    rows = {}
    for files in SIZES:
        repo = f"filler/r{files}"
        base = filler_repo(root / "repos" / repo.replace("/", "__"), files)
        rows[f"files={files}"] = open_series(cfg, _task(repo, base), root / "repos", OPENS)
    return rows


def by_workers(root: Path, cfg: Any) -> dict[str, Any]:
    task = _task(f"filler/r{SIZES[-1]}", _head(root / "repos" / f"filler__r{SIZES[-1]}"))
    runs: dict[int, list[dict[str, Any]]] = {w: [] for w in WORKERS}
    for round_ in range(2):
        for workers in WORKERS if round_ == 0 else WORKERS[::-1]:
            started = time.perf_counter()
            with ThreadPoolExecutor(workers) as pool:
                timed = list(
                    pool.map(lambda _: _timed_open(cfg, task, root / "repos"), range(OPENS * workers))
                )
            wall = time.perf_counter() - started
            runs[workers].append({"opens_per_s": OPENS * workers / wall, "open_s": [t[0] for t in timed]})
    return {
        f"workers={w}": {
            "opens_per_s_median": round(statistics.median(r["opens_per_s"] for r in rs), 1),
            "open_ms": percentiles([s for r in rs for s in r["open_s"]]),
        }
        for w, rs in runs.items()
    }


def _head(repo: Path) -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()


def demo_opens(root: Path, cfg: Any) -> dict[str, Any]:
    from protege.tasksets import load_task_set

    rows = {}
    for task in load_task_set("demo:all"):
        series = open_series(cfg, task, root / "demo-repos", 3)
        rows[task.repo] = {
            k: series[k] for k in ("first_open_cache_miss_s", "open_ms", "open_to_first_command_ms")
        }
    medians = [row["open_ms"]["p50"] for row in rows.values()]
    misses = [row["first_open_cache_miss_s"] for row in rows.values()]
    return {
        "per_repo": rows,
        "warm_open_ms_median": round(statistics.median(medians), 2),
        "warm_open_to_first_command_ms_median": round(
            statistics.median(row["open_to_first_command_ms"]["p50"] for row in rows.values()), 2
        ),
        "cache_miss_open_s_median": round(statistics.median(misses), 3),
    }


# --------------------------------------------------------------------------------------------------
# (d) grading vs the task's own test command
# --------------------------------------------------------------------------------------------------


def test_command(eval_script: str) -> str:
    """The line between swebench's `>>>>> Start Test Output` and `>>>>> End Test Output` markers."""
    lines = eval_script.splitlines()
    start = next(n for n, line in enumerate(lines) if "Start Test Output" in line)
    end = next(n for n, line in enumerate(lines) if "End Test Output" in line)
    return "\n".join(lines[start + 1 : end])


def _host_checkout(task: Any, repos: Path, dest: Path, with_gold: bool) -> Path:
    subprocess.run(["git", "clone", "-q", str(repos / task.repo_dirname), str(dest)], check=True)
    subprocess.run(["git", "checkout", "-q", "--detach", task.base_commit], cwd=dest, check=True)
    for patch in (task.test_patch, task.patch) if with_gold else (task.test_patch,):
        subprocess.run(["git", "apply", "-"], cwd=dest, input=patch, text=True, check=True)
    return dest


def _run_tests_on_host(command: str, tree: Path, should_pass: bool) -> float:
    """Wall seconds of the test command with this venv's Python first on PATH, as in the sandbox."""
    path = f"{sys.prefix}/bin:{os.environ.get('PATH', '')}"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PATH": path}
    started = time.perf_counter()
    done = subprocess.run(["bash", "-c", command], cwd=tree, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if (done.returncode == 0) != should_pass:
        raise RuntimeError(f"{command} in {tree} exited {done.returncode}: {done.stdout[-500:]}")
    return seconds


def _grade_once(task: Any, patch: str, label: str, cfg: Any, root: Path, n: int) -> float:
    """Wall seconds of one grading (tests run even for the empty patch)."""
    from protege.grading import grade

    started = time.perf_counter()
    result = grade(
        task,
        patch,
        cfg,
        root / "demo-repos",
        label=label,
        run_id=f"bench-{n}",
        logs_dir=root / "grading",
        run_tests_on_empty=True,
    )
    seconds = time.perf_counter() - started
    if result.resolved != (label == "gold"):
        raise RuntimeError(
            f"{task.instance_id} {label}: resolved={result.resolved} ({result.failure_reason})"
        )
    return seconds


def grading_vs_tests(root: Path, cfg: Any, repos: Path, tasks: list[Any]) -> dict[str, Any]:
    """Per task, GRADE_REPEATS rounds after a warm-up round, each: tests on the gold tree, grade gold, tests
    on the base tree, grade empty (interleaved, so both sides see the same load)."""
    from protege.grading import preload_swebench

    preload_swebench()
    rows = {}
    for task in tasks:
        command = test_command(task.eval_script)
        trees = {
            gold: _host_checkout(task, repos, root / f"host-{task.instance_id}-{gold}", gold)
            for gold in (True, False)
        }
        rounds = []
        for n in range(GRADE_REPEATS + 1):
            rounds.append(
                (
                    _run_tests_on_host(command, trees[True], True),
                    _grade_once(task, task.patch, "gold", cfg, root, n),
                    _run_tests_on_host(command, trees[False], False),
                    _grade_once(task, "", "empty", cfg, root, n),
                )
            )
        host_s = statistics.median(r[0] + r[2] for r in rounds[1:])
        grade_s = statistics.median(r[1] + r[3] for r in rounds[1:])
        rows[task.instance_id] = {
            "grade_gold_plus_empty_s": round(grade_s, 3),
            "test_command_twice_s": round(host_s, 3),
            "ratio": round(grade_s / host_s, 3),
            "warmup_round_s": [round(x, 3) for x in rounds[0]],
            "test_command": command,
        }
    ratios = [row["ratio"] for row in rows.values()]
    return {
        "per_instance": rows,
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_max": max(ratios),
    }


def run() -> dict[str, Any]:
    from protege.config import SandboxConfig, load_config
    from protege.demo import build_demo_repos
    from protege.tasksets import load_task_set

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = SandboxConfig(checkout_cache_dir=str(root / "cache"))
        build_demo_repos(root / "demo-repos")
        result: dict[str, Any] = {"by_size": by_size(root, cfg), "by_workers": by_workers(root, cfg)}
        result["demo_repos"] = demo_opens(root, cfg)
        full = load_config("local", overrides=[f"agent.sandbox.checkout_cache_dir={root / 'cache'}"])
        tasks = load_task_set("demo:all")
        result["grading"] = grading_vs_tests(root, full, root / "demo-repos", tasks)
    result["must_show"] = {
        "open_10k_files_warm_p50_s": result["by_size"]["files=10000"]["open_ms"]["p50"] / 1000,
        "open_10k_files_to_first_command_p50_s": result["by_size"]["files=10000"]["open_to_first_command_ms"][
            "p50"
        ]
        / 1000,
        "open_10k_files_cache_miss_s": result["by_size"]["files=10000"]["first_open_cache_miss_s"],
        "open_demo_warm_median_ms": result["demo_repos"]["warm_open_ms_median"],
        "open_demo_to_first_command_median_ms": result["demo_repos"]["warm_open_to_first_command_ms_median"],
        "open_demo_cache_miss_median_s": result["demo_repos"]["cache_miss_open_s_median"],
        "grading_over_test_command_median": result["grading"]["ratio_median"],
        "grading_over_test_command_max": result["grading"]["ratio_max"],
    }
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
