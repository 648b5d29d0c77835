"""A pytest fork server: one interpreter imports pytest once, then forks a fresh child per test run.

`tasks generate` runs a repository's whole suite once per mutation. On small suites nearly all of a
`python -m pytest` run is interpreter start and the import of pytest and its installed plugins (about
0.5 s of CPU here); a child forked from a process that already imported them starts in milliseconds. Each child chdirs into the tree, puts
it first on sys.path (what `python -m` does), sends its output to a file and calls `pytest.main` with the
eval script's arguments, so statuses and test names are the same as `core.run_tests` gives (a test
compares them). The parent never imports the code under test, so every child imports the mutated files
afresh; bytecode is never written. A run past its timeout is killed with its whole process group.

The server is started with the task's interpreter (`--python`), so it needs only pytest there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from protege.demo.taskset import LOG_PARSER, PYTEST_COMMAND
from protege.taskgen.core import TestRun, test_env

# Runs inside the task's interpreter: standard library and pytest only.
SERVER = r"""
import json, os, signal, sys, time
from importlib.metadata import entry_points

import pytest  # the imports every child shares: pytest and its installed plugins

for plugin in entry_points(group="pytest11"):
    try:
        plugin.load()
    except Exception:
        pass  # the child's own plugin loading reports it, as `python -m pytest` would

sys.path.pop(0)  # this script's directory: not the tests' business
base_path = list(sys.path)
for line in sys.stdin:
    job = json.loads(line)
    with open(job["log"], "wb") as log:
        pid = os.fork()
        if pid == 0:
            os.setsid()
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            os.chdir(job["cwd"])
            sys.path[:] = [job["cwd"]] + base_path
            code = 3
            try:
                code = int(pytest.main(job["args"]))
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
    deadline = time.monotonic() + job["timeout"]
    status, timed_out = None, False
    while status is None:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(raw)
        elif time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            status, timed_out = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), True
        else:
            time.sleep(0.005)
    print(json.dumps({"exit": status, "timed_out": timed_out}), flush=True)
"""


class PytestServer:
    """One fork server (a process of `python`); `run` is `core.run_tests` for it. Not thread-safe: give
    each worker its own."""

    def __init__(self, python: str = sys.executable, env: dict[str, str] | None = None) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="protege-pytest-server-")
        script = Path(self._dir.name) / "pytest_server.py"
        script.write_text(SERVER, encoding="utf-8")
        self._log = Path(self._dir.name) / "run.log"
        self._process = subprocess.Popen(
            [python, str(script)],
            env=env or test_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._lock = threading.Lock()

    def run(
        self, tree: Path, tests: list[str] | tuple[str, ...] = (), *, timeout_s: float = 120.0
    ) -> TestRun:
        from swebench.harness.log_parsers import PARSER_REGISTRY

        job = {
            "cwd": str(Path(tree).resolve()),
            "args": [*PYTEST_COMMAND.split()[3:], *tests],
            "log": str(self._log),
            "timeout": timeout_s,
        }
        started = time.monotonic()
        with self._lock:
            assert self._process.stdin is not None and self._process.stdout is not None
            self._process.stdin.write(json.dumps(job) + "\n")
            self._process.stdin.flush()
            reply = self._process.stdout.readline()
            if not reply:
                raise RuntimeError(f"pytest fork server exited ({self._process.poll()})")
            answer = json.loads(reply)
            text = self._log.read_text(encoding="utf-8", errors="replace")
        statuses = {} if answer["timed_out"] else PARSER_REGISTRY[LOG_PARSER](text, None)
        return TestRun(statuses, text, answer["exit"], answer["timed_out"], time.monotonic() - started)

    def close(self) -> None:
        if self._process.poll() is None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._dir.cleanup()

    def __enter__(self) -> PytestServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
