"""The core `tasks mine` and `tasks generate` share: test runs before/after a change, and instances.

A test run is the repository's pytest in a plain copy of a tree (no sandbox: the trees are the user's own
repository or our mutation of it, and a timeout bounds every run), with the same command and log parser
the task's eval script and swebench's grading use, so the test names written into FAIL_TO_PASS and
PASS_TO_PASS are exactly the names grading will look for.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from protege.demo.taskset import EVAL_TYPE, LOG_PARSER, PYTEST_COMMAND, eval_script
from protege.tasks import TaskInstance

PASSED = "PASSED"
DEMO_PREFIX = "demo:"
# Fixed identity and dates for the commits taskgen writes: the same input gives the same SHA everywhere.
GIT_NAME, GIT_EMAIL = "protege taskgen", "taskgen@protege.invalid"
_TEST_DIRS = {"tests", "test", "testing"}
_TEST_NAME = re.compile(r"^(test_.*|.*_test|conftest)\.py$")


class TaskgenError(ValueError):
    """Bad input to `tasks mine` / `tasks generate` (a repository, commit or option); names it."""


def say_line(text: str) -> None:
    """The default progress sink: one flushed line (progress must show up in a log file as it happens)."""
    print(text, flush=True)


def is_test_file(path: str) -> bool:
    """A test file: under a tests/test/testing directory, or named test_*.py, *_test.py, conftest.py."""
    parts = PurePosixPath(path).parts
    return bool(_TEST_DIRS.intersection(parts[:-1])) or bool(_TEST_NAME.match(parts[-1] if parts else ""))


# --------------------------------------------------------------------------------------------------
# git, isolated from the user's configuration
# --------------------------------------------------------------------------------------------------


def git_env(date: str | None = None) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "LC_ALL": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_NAME": GIT_NAME,
        "GIT_AUTHOR_EMAIL": GIT_EMAIL,
        "GIT_COMMITTER_NAME": GIT_NAME,
        "GIT_COMMITTER_EMAIL": GIT_EMAIL,
    }
    if date:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = date
    return env


def git(repo: Path, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None) -> str:
    """stdout of `git args` in `repo`; a failure raises TaskgenError naming the repository."""
    done = subprocess.run(
        ["git", *args], cwd=repo, env=env or git_env(), input=stdin, capture_output=True, check=False
    )
    if done.returncode != 0:
        error = done.stderr.decode(errors="replace").strip()
        raise TaskgenError(f"{repo}: git {' '.join(args[:3])} failed: {error}")
    return done.stdout.decode(errors="replace")


def export_tree(repo: Path, commit: str, dest: Path) -> Path:
    """The files of `commit` written to `dest` (no .git): the tree tests run in."""
    done = subprocess.run(
        ["git", "archive", "--format=tar", commit], cwd=repo, env=git_env(), capture_output=True, check=False
    )
    if done.returncode != 0:
        raise TaskgenError(f"{repo}: cannot export {commit}: {done.stderr.decode(errors='replace').strip()}")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
        archive.extractall(dest, filter="data")
    return dest


def apply_patch(tree: Path, patch: str, what: str) -> None:
    """Apply a unified diff to a plain tree (git apply works outside a repository)."""
    if not patch.strip():
        return
    done = subprocess.run(
        ["git", "apply", "--whitespace=nowarn", "-"],
        cwd=tree,
        env=git_env(),
        input=patch.encode(),
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise TaskgenError(f"{what} does not apply: {done.stderr.decode(errors='replace').strip()}")


# --------------------------------------------------------------------------------------------------
# Test runs
# --------------------------------------------------------------------------------------------------


@dataclass
class TestRun:
    """One pytest run: the status of every test it reported, and its output."""

    statuses: dict[str, str]
    output: str
    exit_code: int
    timed_out: bool
    duration_s: float

    @property
    def passed(self) -> set[str]:
        return {test for test, status in self.statuses.items() if status == PASSED}

    @property
    def not_passed(self) -> set[str]:
        return {test for test, status in self.statuses.items() if status != PASSED}


def test_env(extra_path: Sequence[str] = ()) -> dict[str, str]:
    """A small, fixed environment: no bytecode written (a mutated file of the same size and mtime must
    never be read from a stale .pyc), a wide terminal (pytest cuts summary lines to its width)."""
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        "COLUMNS": "200",
    }
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(extra_path)
    return env


@dataclass(frozen=True)
class TestEnvironment:
    """How a repository's tests run in a plain tree: its environment's interpreter, and whether the tree's
    import root (`src/` when there is one, else the root) goes on PYTHONPATH, which stands in for the
    environment's editable install (`install_repo`) of a pure-Python repository."""

    python: str = sys.executable
    repo_on_path: bool = False

    def variables(self, tree: Path) -> dict[str, str]:
        if not self.repo_on_path:
            return test_env()
        return test_env([str(tree / "src" if (tree / "src").is_dir() else tree)])


def test_environment(repo_dir: Path, repo: str, commit: str, environments: Any = None) -> TestEnvironment:
    """The environment a task of `repo` at `commit` gets (protege.environments: the repository's own
    environment file, the user's spec file, the built-in demo specs), its venv built once and cached;
    `environments` is `agent.sandbox.environments` (None: this interpreter). Its install lines are not
    run here."""
    if environments is None:
        return TestEnvironment()
    from protege.environments import prepare_local_environment, resolve_environment, user_specs

    probe = TaskInstance.model_construct(instance_id=f"{repo}@{commit[:12]}", repo=repo, base_commit=commit)
    spec = resolve_environment(probe, repo_dir, user_specs(environments))
    built = prepare_local_environment(spec, environments.cache_dir, timeout_s=environments.build_timeout_s)
    return TestEnvironment(str(built.bin_dir / "python") if built else sys.executable, spec.install_repo)


def run_tests(
    tree: Path,
    tests: Sequence[str] = (),
    *,
    python: str = sys.executable,
    timeout_s: float = 120.0,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> TestRun:
    """Run pytest in `tree` on `tests` (files or node ids; all tests when empty), the eval script's command
    with `python`; statuses parsed by swebench's pytest parser. A run past `timeout_s` is killed whole."""
    from swebench.harness.log_parsers import PARSER_REGISTRY

    argv = [python, *PYTEST_COMMAND.split()[1:], *extra_args, *tests]
    started = time.monotonic()
    process = subprocess.Popen(
        argv,
        cwd=tree,
        env=env or test_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        timed_out = True
    text = output.decode(errors="replace")
    statuses = {} if timed_out else PARSER_REGISTRY[LOG_PARSER](text, None)
    return TestRun(statuses, text, process.returncode, timed_out, time.monotonic() - started)


def flips(before: TestRun, after: TestRun) -> tuple[list[str], list[str]]:
    """(FAIL_TO_PASS, PASS_TO_PASS): tests that pass after and did not pass before (failed, errored or
    were not there), and tests that pass both times; each sorted."""
    fail_to_pass = sorted(after.passed - before.passed)
    pass_to_pass = sorted(after.passed & before.passed)
    return fail_to_pass, pass_to_pass


# --------------------------------------------------------------------------------------------------
# Instances
# --------------------------------------------------------------------------------------------------


def make_instance(
    *,
    instance_id: str,
    repo: str,
    base_commit: str,
    problem_statement: str,
    patch: str,
    test_patch: str,
    fail_to_pass: list[str],
    pass_to_pass: list[str],
    created_at: str = "",
    version: str = "",
) -> TaskInstance:
    """A SWE-bench 5.x instance whose eval script applies `test_patch` and runs its test files with the
    command the runs above used."""
    return TaskInstance(
        instance_id=instance_id,
        repo=repo,
        base_commit=base_commit,
        problem_statement=problem_statement,
        patch=patch,
        test_patch=test_patch,
        FAIL_TO_PASS=fail_to_pass,
        PASS_TO_PASS=pass_to_pass,
        version=version,
        environment_setup_commit=base_commit,
        created_at=created_at,
        eval_script=eval_script(base_commit, test_patch),
        log_parser=LOG_PARSER,
        eval_type=EVAL_TYPE,
    )


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file (none if it is missing); a line cut short by a killed writer is skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def write_rows(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write JSONL rows atomically (a killed run never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    text = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
    return path


def merge_rows(path: Path, new_rows: list[dict[str, Any]]) -> Path:
    """`path`'s rows with `new_rows` added or replacing the rows of the same instance_id."""
    replaced = {row["instance_id"] for row in new_rows}
    kept = [row for row in read_rows(path) if row.get("instance_id") not in replaced]
    return write_rows(path, sorted(kept + new_rows, key=lambda row: row["instance_id"]))


# --------------------------------------------------------------------------------------------------
# Which repository
# --------------------------------------------------------------------------------------------------


def resolve_repo(source: str, repos_dir: Path, repo_name: str | None = None) -> tuple[Path, str]:
    """(git directory, `owner/name`) of REPO: `demo:<name>` builds that bundled repository under
    `repos_dir`; anything else is a path to a git repository, named `repo_name` or `local/<dirname>`."""
    if source.startswith(DEMO_PREFIX):
        from protege.demo import build_demo_repos
        from protege.demo.spec import DEMO_OWNER, load_specs

        name = source.removeprefix(DEMO_PREFIX)
        known = sorted(spec.name for spec in load_specs())
        if name not in known:
            raise TaskgenError(f"{source}: no bundled repository named {name!r} (one of {', '.join(known)})")
        repo = f"{DEMO_OWNER}/{name}"
        return build_demo_repos(repos_dir, only=[repo])[repo], repo
    path = Path(source)
    if not (path / ".git").exists():
        raise TaskgenError(f"{source}: not a git repository (and not demo:<name>)")
    return path.resolve(), repo_name or f"local/{path.resolve().name}"


def demo_sources() -> list[str]:
    """`demo:<name>` of every bundled repository."""
    from protege.demo.spec import load_specs

    return [f"{DEMO_PREFIX}{spec.name}" for spec in load_specs()]
