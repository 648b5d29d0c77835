"""Cost of one command through the local sandbox: median wall time of `true`, and of opening one; and the
tool calls against the host doing the same work.

`python -m bench bench_sandbox` (or `python bench/bench_sandbox.py` for a quick print). Measures the
configuration the episode uses (as whatever user runs it: as root that includes the uid drop, the
cgroup join, seccomp and the size-limited tmpfs) and, for the breakdown, with `sandbox.seccomp=false`.

`tool_calls`: the agent's `bash` tool running `true` against host `bash -c true`, and the editor's
`view` / `str_replace` (through `Editor`, as the agent calls them) against host Python doing the same
work on a local copy of the file (read, format; read, replace, write, format). Each pair alternates
which side runs first, so load hits both alike; the first WARMUP calls of each are reported apart; the
load average is recorded before and after. Goals (issue 18): bash median <= 1.5x host and p90 <= 3x;
editor median <= 5 ms over host Python.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

RESULT = "sandbox_cpu"
COMMANDS = 60
TOOL_CALLS = 300  # per side and operation, after the warm-up
WARMUP = 20
GOALS = {"bash_ratio_p50": 1.5, "bash_ratio_p90": 3.0, "editor_over_ms_p50": 5.0}


def _repo(root: Path) -> str:
    root.mkdir(parents=True)
    run = {"cwd": root, "check": True, "capture_output": True}
    subprocess.run(["git", "init", "-q"], **run)  # type: ignore[call-overload]
    (root / "a.py").write_text("x = 1\n")
    subprocess.run(["git", "add", "-A"], **run)  # type: ignore[call-overload]
    subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "c"], **run)  # type: ignore[call-overload]
    return subprocess.run(["git", "rev-parse", "HEAD"], text=True, **run).stdout.strip()  # type: ignore[call-overload]


def _task(base: str) -> object:
    from protege.tasks import TaskInstance

    diff = "diff --git a/a.py b/a.py\n--- a/a.py\n+++ b/a.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n"
    return TaskInstance(
        instance_id="o__r-1",
        repo="o/r",
        base_commit=base,
        problem_statement="p",
        patch=diff,
        test_patch=diff,
        FAIL_TO_PASS=["t"],
    )


def measure(**overrides: object) -> dict[str, float]:
    from protege.agent.sandbox import open_sandbox
    from protege.config import SandboxConfig

    with tempfile.TemporaryDirectory() as tmp:
        task = _task(_repo(Path(tmp) / "o__r"))
        opened = time.perf_counter()
        with open_sandbox(SandboxConfig(**overrides), task, Path(tmp)) as sandbox:
            open_s = time.perf_counter() - opened
            started = time.perf_counter()
            sandbox.run("true")  # waits for the shell server's boot, which the open does not
            first_s = time.perf_counter() - started
            times = []
            for _ in range(COMMANDS):
                started = time.perf_counter()
                sandbox.run("true")
                times.append(time.perf_counter() - started)
    # No CPU time per command any more: the commands are children of the sandbox's shell server, which is
    # killed (not reaped) at close, so their CPU never reaches this process's RUSAGE_CHILDREN.
    return {
        "open_s": round(open_s, 4),
        "first_command_ms": round(first_s * 1000, 2),
        "open_plus_first_s": round(open_s + first_s, 4),
        "true_median_ms": round(statistics.median(times) * 1000, 2),
    }


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": at(1.0), "n": len(ordered)}


def _pair(tool: Callable[[], object], host: Callable[[], object]) -> dict[str, object]:
    """Alternate tool and host calls (which goes first alternates too); warm-up reported apart."""
    times: dict[str, list[float]] = {"tool": [], "host": []}
    warm: dict[str, list[float]] = {"tool": [], "host": []}
    for i in range(WARMUP + TOOL_CALLS):
        order = (("tool", tool), ("host", host)) if i % 2 == 0 else (("host", host), ("tool", tool))
        for side, call in order:
            started = time.perf_counter()
            call()
            (warm if i < WARMUP else times)[side].append(time.perf_counter() - started)
    tool_p, host_p = _percentiles(times["tool"]), _percentiles(times["host"])
    return {
        "tool_ms": tool_p,
        "host_ms": host_p,
        "ratio_p50": round(tool_p["p50"] / host_p["p50"], 2),
        "ratio_p90": round(tool_p["p90"] / host_p["p90"], 2),
        "over_ms_p50": round(tool_p["p50"] - host_p["p50"], 3),
        "over_ms_p90": round(tool_p["p90"] - host_p["p90"], 3),
        "warmup_ms": {"tool": _percentiles(warm["tool"]), "host": _percentiles(warm["host"])},
    }


def tool_calls(**overrides: object) -> dict[str, object]:
    from protege.agent.editor import Editor, numbered
    from protege.agent.sandbox import open_sandbox
    from protege.agent.sandbox.shell_server import file_lines
    from protege.config import SandboxConfig

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        task = _task(_repo(Path(tmp) / "o__r"))
        with open_sandbox(SandboxConfig(**overrides), task, Path(tmp)) as sandbox:
            # host Python edits a file on the same file system as the sandbox's tree (its tmpfs, as root)
            host_file = getattr(sandbox, "_box", Path(tmp)) / "host-a.py"
            text = "".join(f"value_{i} = {i}  # a line of about forty characters\n" for i in range(200))
            sandbox.write_file("a.py", text)
            host_file.write_text(text)
            editor = Editor(sandbox)
            flip = {"tool": 0, "host": 0}

            def edit_tool() -> None:
                flip["tool"] ^= 1
                old, new = ("value_7 = 7", "value_7 = 8")[:: 1 - 2 * (flip["tool"] == 0)]
                editor.run({"command": "str_replace", "path": "a.py", "old_str": old, "new_str": new})

            def edit_host() -> None:
                flip["host"] ^= 1
                old, new = ("value_7 = 7", "value_7 = 8")[:: 1 - 2 * (flip["host"] == 0)]
                current = host_file.read_text()
                assert current.count(old) == 1
                updated = current.replace(old, new)
                host_file.write_text(updated)
                numbered(file_lines(updated)[3:12], 4)

            result = {
                "bash_true": _pair(
                    lambda: sandbox.run("true"), lambda: subprocess.run(["bash", "-c", "true"], check=True)
                ),
                "editor_view": _pair(
                    lambda: editor.run({"command": "view", "path": "a.py"}),
                    lambda: numbered(file_lines(host_file.read_text())),
                ),
                "editor_str_replace": _pair(edit_tool, edit_host),
            }
    result["load_average_1m"] = {"before": load_before[0], "after": os.getloadavg()[0]}
    result["goals"] = {
        "bash_ratio_p50": (result["bash_true"]["ratio_p50"], GOALS["bash_ratio_p50"]),
        "bash_ratio_p90": (result["bash_true"]["ratio_p90"], GOALS["bash_ratio_p90"]),
        "view_over_ms_p50": (result["editor_view"]["over_ms_p50"], GOALS["editor_over_ms_p50"]),
        "str_replace_over_ms_p50": (result["editor_str_replace"]["over_ms_p50"], GOALS["editor_over_ms_p50"]),
    }
    result["goals_met"] = all(value <= goal for value, goal in result["goals"].values())
    return result


def run() -> dict[str, object]:
    return {
        "commands": COMMANDS,
        "default": measure(),
        "no_seccomp": measure(seccomp=False),
        "tool_calls": tool_calls(),
    }


if __name__ == "__main__":
    print(run())
