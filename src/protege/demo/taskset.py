"""The demo task set as SWE-bench rows: eval scripts, the generated `tasks.jsonl`, and `demo_tasks`.

`tasks.jsonl` is generated from the task sources and the commits `build_demo_repos` produces, and is
committed: one SWE-bench 5.x row per instance (FAIL_TO_PASS / PASS_TO_PASS as JSON strings) plus a
`split` column ("train" or "eval"). A test rebuilds it and compares, so it cannot go stale silently.
Regenerate with `python -m protege.demo --write-jsonl`.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import tempfile
from pathlib import Path
from typing import Any

from protege import patches
from protege.demo.build import build_demo_repos, head_commit
from protege.demo.spec import JSONL_PATH, SPLITS, DemoTaskSpec, load_specs
from protege.tasks import TEST_OUTPUT_END, TEST_OUTPUT_START, TaskInstance

TESTBED = "/testbed"
LOG_PARSER = "parse_log_pytest"
EVAL_TYPE = "pass_and_fail"
# `-rA` prints one `PASSED path::test` / `FAILED path::test - ...` line per test, which
# swebench's parse_log_pytest reads; no cache directory is left in the repository.
PYTEST_COMMAND = "python -m pytest -rA -p no:cacheprovider"


def patch_files(patch: str) -> list[str]:
    """Paths a unified diff touches (post-image names), in order of appearance."""
    return patches.touched_files(patch)


def _existing_files(patch: str) -> list[str]:
    """Paths the diff modifies (not creates): the ones a `git checkout <base> --` can restore."""
    return patches.modified_files(patch)


def heredoc_delimiter(content: str) -> str:
    """A heredoc delimiter that does not occur in `content` (swebench's scheme)."""
    delimiter = f"EOF_{hashlib.blake2b(content.encode()).hexdigest()[:12]}"
    while delimiter in content:
        delimiter = f"EOF_{hashlib.blake2b((content + delimiter).encode()).hexdigest()[:12]}"
    return delimiter


def eval_script(base_commit: str, test_patch: str) -> str:
    """The SWE-bench-style evaluation script for a repository checked out at `/testbed`.

    It restores the test files the test patch touches to base_commit, applies the test patch, runs
    pytest on those files between swebench's start/end markers (written as `:` commands, so under
    `set -x` each marker appears exactly once in the log), then restores the test files again.
    """
    tests = patch_files(test_patch)
    restorable = " ".join(shlex.quote(name) for name in _existing_files(test_patch))
    reset = f"git checkout {base_commit} -- {restorable}" if restorable else ":"
    delimiter = heredoc_delimiter(test_patch)
    body = test_patch if test_patch.endswith("\n") else test_patch + "\n"
    lines = [
        "#!/bin/bash",
        "set -uxo pipefail",
        f"cd {TESTBED}",
        reset,
        f"git apply -v - <<'{delimiter}'",
        body + delimiter,
        f": '{TEST_OUTPUT_START}'",
        f"{PYTEST_COMMAND} {' '.join(shlex.quote(t) for t in tests)}",
        f": '{TEST_OUTPUT_END}'",
        reset,
    ]
    return "\n".join(lines) + "\n"


def task_instance(spec: DemoTaskSpec, base_commit: str) -> TaskInstance:
    """The TaskInstance of `spec` at `base_commit` (the SHA the builder produced)."""
    return TaskInstance(
        instance_id=spec.instance_id,
        repo=spec.repo,
        base_commit=base_commit,
        problem_statement=spec.problem_statement,
        patch=spec.gold_patch,
        test_patch=spec.test_patch,
        FAIL_TO_PASS=spec.FAIL_TO_PASS,
        PASS_TO_PASS=spec.PASS_TO_PASS,
        version=spec.version,
        environment_setup_commit=base_commit,
        created_at=spec.created_at,
        image=f"{spec.repo}:{spec.version}",
        eval_script=eval_script(base_commit, spec.test_patch),
        log_parser=LOG_PARSER,
        eval_type=EVAL_TYPE,
    )


def _row_order(spec: DemoTaskSpec) -> tuple[int, str]:
    return SPLITS.index(spec.split), spec.instance_id


def demo_rows(repos: dict[str, Path]) -> list[dict[str, Any]]:
    """The JSONL rows, given built repositories ({repo: path}, as `build_demo_repos` returns)."""
    rows = []
    for spec in sorted(load_specs(), key=_row_order):
        if spec.repo not in repos:
            raise ValueError(f"{spec.instance_id}: repository {spec.repo} was not built")
        row = task_instance(spec, head_commit(repos[spec.repo])).to_swebench()
        rows.append({**row, "split": spec.split})
    return rows


def render_jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)


def generate_jsonl(work_dir: Path | None = None) -> str:
    """The text `tasks.jsonl` should hold: builds every repository (in a temp dir by default)."""
    if work_dir is not None:
        return render_jsonl(demo_rows(build_demo_repos(work_dir)))
    with tempfile.TemporaryDirectory(prefix="protege-demo-") as tmp:
        return render_jsonl(demo_rows(build_demo_repos(Path(tmp))))


def write_jsonl(path: Path = JSONL_PATH) -> Path:
    """Regenerate `tasks.jsonl` (see `generate_jsonl`)."""
    path.write_text(generate_jsonl(), encoding="utf-8")
    return path


def read_rows(path: Path = JSONL_PATH) -> list[dict[str, Any]]:
    """The committed rows, each with its `split`."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run `python -m protege.demo --write-jsonl`")
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def demo_tasks(split: str = "all") -> list[TaskInstance]:
    """The bundled demo tasks of `split` ("train", "eval", "all" = train + eval, or "deps": the tasks whose
    tests need packages from the index), from the committed JSONL.

    The repositories they refer to are built with `build_demo_repos(tasks.repos_dir)`.
    """
    if split not in (*SPLITS, "all"):
        raise ValueError(f"demo split must be one of train, eval, all or deps; got {split!r}")
    rows = [
        row for row in read_rows() if row["split"] == split or (split == "all" and row["split"] != "deps")
    ]
    return [TaskInstance.model_validate(row) for row in rows]
