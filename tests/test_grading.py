"""Grading in real bubblewrap sandboxes, against swebench's own `get_eval_report`.

A small repository whose gold fix touches two files gives every grading outcome: gold, empty, a
partial fix (one file's hunk), a fix that breaks a PASS_TO_PASS test, a patch that does not apply, a
patch that hangs the tests (killed at the timeout) and a sandbox that cannot start. For each, our
report must equal swebench's `get_eval_report` on the log we wrote, field by field. The bundled demo
set is verified end to end below (gold resolves, empty does not, a wrong FAIL_TO_PASS name is
reported by id).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from protege.agent.protocols import SandboxError
from protege.config import ProtegeConfig
from protege.grading import GradeJob, GradingError, grade, grade_batch, swebench_spec
from protege.tasks import TaskInstance

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")

BASE_FILES = {
    "calc.py": "def add(a, b):\n    return a - b\n\n\ndef sub(a, b):\n    return a - b\n",
    "ops.py": "def mul(a, b):\n    return a + b\n",
    "test_calc.py": "from calc import sub\n\n\ndef test_sub():\n    assert sub(5, 3) == 2\n",
}
FIX_CALC = (
    "diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n"
    "@@ -1,2 +1,2 @@\n def add(a, b):\n-    return a - b\n+    return a + b\n"
)
FIX_OPS = "diff --git a/ops.py b/ops.py\n--- a/ops.py\n+++ b/ops.py\n@@ -1,2 +1,2 @@\n def mul(a, b):\n-    return a + b\n+    return a * b\n"
BREAK_SUB = (
    "diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n"
    "@@ -1,6 +1,6 @@\n def add(a, b):\n-    return a - b\n+    return a + b\n \n \n def sub(a, b):\n"
    "-    return a - b\n+    return b - a\n"
)
NOT_APPLYING = FIX_CALC.replace("-    return a - b", "-    return a % b")
HANGS = FIX_OPS.replace(
    "+    return a * b\n", "+    return a * b\n+import time; time.sleep(10_000)\n"
).replace("+1,2", "+1,3")
TEST_PATCH = (
    "diff --git a/test_calc.py b/test_calc.py\n--- a/test_calc.py\n+++ b/test_calc.py\n"
    "@@ -1,5 +1,14 @@\n-from calc import sub\n+from calc import add, sub\n+from ops import mul\n \n \n"
    " def test_sub():\n     assert sub(5, 3) == 2\n+\n+\n+def test_add():\n+    assert add(2, 3) == 5\n+\n+\n"
    "+def test_mul():\n+    assert mul(2, 3) == 6\n"
)
EVAL = """#!/bin/bash
set -uxo pipefail
cd /testbed
git checkout {base} -- test_calc.py
git apply -v - <<'EOF_114329324912'
{test_patch}
EOF_114329324912
: '>>>>> Start Test Output'
python -m pytest -p no:cacheprovider -rA test_calc.py
: '>>>>> End Test Output'
git checkout {base} -- test_calc.py
"""
F2P = ["test_calc.py::test_add", "test_calc.py::test_mul"]
P2P = ["test_calc.py::test_sub"]


@pytest.fixture(scope="module")
def calc(tmp_path_factory) -> tuple[TaskInstance, Path]:
    """(task, repos_dir): the repository committed under repos_dir/acme__calc."""
    repos = tmp_path_factory.mktemp("repos")
    root = repos / "acme__calc"
    root.mkdir()
    for name, text in BASE_FILES.items():
        (root / name).write_text(text)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "base"], cwd=root, check=True)
    base = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True
    ).stdout.strip()
    task = TaskInstance(
        instance_id="acme__calc-1",
        repo="acme/calc",
        base_commit=base,
        problem_statement="add and mul are wrong",
        patch=FIX_CALC + FIX_OPS,
        test_patch=TEST_PATCH,
        FAIL_TO_PASS=F2P,
        PASS_TO_PASS=P2P,
        image="acme/calc:1",
        eval_script=EVAL.format(base=base, test_patch=TEST_PATCH.rstrip("\n")),
    )
    return task, repos


def config(tmp_path: Path, **eval_cfg) -> ProtegeConfig:
    return ProtegeConfig.model_validate(
        {
            "agent": {"sandbox": {"backend": "local", "command_timeout_s": 60}},
            "eval": {"grade_logs_dir": str(tmp_path / "grading"), "workers": 2, **eval_cfg},
        }
    )


def swebench_report(task: TaskInstance, patch: str | None, log_path: str) -> dict:
    from swebench.harness.grading import get_eval_report

    prediction = {"instance_id": task.instance_id, "model_name_or_path": "model", "model_patch": patch}
    return get_eval_report(swebench_spec(task), prediction, log_path, include_tests_status=True)[
        task.instance_id
    ]


PATCHES = {
    "gold": (FIX_CALC + FIX_OPS, "none", True, [], []),
    "empty": ("", "empty_patch", False, None, None),
    "partial": (FIX_CALC, "tests_failed", False, ["test_calc.py::test_mul"], []),
    "breaks_p2p": (BREAK_SUB + FIX_OPS, "tests_failed", False, [], P2P),
    "does_not_apply": (NOT_APPLYING, "patch_apply_failed", False, None, None),
}


def test_grading_parity_with_swebench_get_eval_report(calc, tmp_path):
    task, repos = calc
    names = list(PATCHES)
    jobs = [GradeJob(task, PATCHES[name][0], label=name) for name in names]
    results = grade_batch(jobs, config(tmp_path), repos, run_id="parity")
    for name, result in zip(names, results, strict=True):
        patch, reason, resolved, f2p_failures, p2p_failures = PATCHES[name]
        assert result.to_swebench() == swebench_report(task, patch, result.log_path), name
        assert (result.failure_reason, result.resolved) == (reason, resolved), name
        if f2p_failures is None:
            assert result.tests_status is None and not result.patch_successfully_applied, name
        else:
            assert result.tests_status["FAIL_TO_PASS"]["failure"] == f2p_failures, name
            assert result.tests_status["PASS_TO_PASS"]["failure"] == p2p_failures, name
        assert (
            Path(result.log_path)
            == tmp_path / "grading" / "parity" / name / task.instance_id / "test_output.txt"
        )
    gold_log = Path(results[0].log_path).read_text()
    # the log is the eval script's own output: swebench's markers and the recorded test exit code
    assert ">>>>> Start Test Output" in gold_log and ">>>>> Test Exit Code: 0" in gold_log
    assert ">>>>> Applied Patch" in (Path(results[0].log_path).parent / "run_instance.log").read_text()
    assert ">>>>> Patch Apply Failed" in Path(results[4].log_path).read_text()


def test_empty_patch_with_tests_run_fails_the_fail_to_pass_tests(calc, tmp_path):
    task, repos = calc
    result = grade(task, "", config(tmp_path), repos, run_tests_on_empty=True)
    assert (result.failure_reason, result.resolved) == ("empty_patch", False)
    assert result.tests_status["FAIL_TO_PASS"]["failure"] == F2P
    assert result.tests_status["PASS_TO_PASS"]["success"] == P2P
    assert result.to_swebench() == swebench_report(task, "", result.log_path)


def test_hung_tests_are_killed_at_the_timeout(calc, tmp_path):
    task, repos = calc
    result = grade(task, FIX_CALC + HANGS, config(tmp_path, grade_timeout_s=3), repos)
    assert (result.failure_reason, result.resolved) == ("timeout", False)
    assert "Timeout error: 3 seconds exceeded." in Path(result.log_path).read_text()
    assert result.to_swebench() == swebench_report(task, FIX_CALC + HANGS, result.log_path)


def test_a_sandbox_that_cannot_start_is_a_sandbox_error(calc, tmp_path):
    task, repos = calc

    def broken_sandbox(*args):
        raise SandboxError("bubblewrap could not start a sandbox")

    result = grade(task, task.patch, config(tmp_path), repos, open_sandbox=broken_sandbox)
    assert (result.failure_reason, result.resolved, result.detail) == (
        "sandbox_error",
        False,
        "bubblewrap could not start a sandbox",
    )


def test_an_ungradable_task_is_named(calc, tmp_path):
    task, repos = calc
    with pytest.raises(GradingError, match="acme__calc-1: log_parser 'parse_log_nope'"):
        grade(task.model_copy(update={"log_parser": "parse_log_nope"}), task.patch, config(tmp_path), repos)
    with pytest.raises(GradingError, match="acme__calc-1: eval_script is empty"):
        grade(task.model_copy(update={"eval_script": ""}), task.patch, config(tmp_path), repos)


def test_grading_parity_on_a_demo_task_whose_fix_touches_two_files(tmp_path):
    from protege.demo import build_demo_repos, demo_tasks

    (task,) = [t for t in demo_tasks("all") if t.instance_id == "protege-demo__moneyfmt-1"]
    build_demo_repos(tmp_path / "repos", only=[task.repo])
    format_diff, money_diff = ("diff --git" + part for part in task.patch.split("diff --git")[1:])
    negative = '-    sign = "-" if value < 0 else ""\n+    sign = ""\n'
    patches = {
        "gold": task.patch,
        "empty": "",
        "partial": money_diff,  # rounding fixed, formatting still two places
        "breaks_p2p": task.patch.replace('     sign = "-" if value < 0 else ""\n', negative),
        "does_not_apply": task.patch.replace(",.2f}", ",.3f}"),
    }
    jobs = [GradeJob(task, patch, label=name) for name, patch in patches.items()]
    results = dict(
        zip(patches, grade_batch(jobs, config(tmp_path), tmp_path / "repos", run_id="demo"), strict=True)
    )
    for name, result in results.items():
        assert result.to_swebench() == swebench_report(task, patches[name], result.log_path), name
    assert results["gold"].resolved
    assert [results[n].failure_reason for n in patches] == [
        "none",
        "empty_patch",
        "tests_failed",
        "tests_failed",
        "patch_apply_failed",
    ]
    partial = results["partial"].tests_status
    assert partial["FAIL_TO_PASS"]["failure"] and partial["FAIL_TO_PASS"]["success"]
    assert results["breaks_p2p"].tests_status["PASS_TO_PASS"]["failure"] == [
        "tests/test_format.py::test_format_negative"
    ]
    assert results["breaks_p2p"].tests_status["FAIL_TO_PASS"]["failure"] == []


@pytest.mark.parametrize("inline_write", [False, True])
@pytest.mark.parametrize("size", [100, 200_000])
def test_the_diff_before_and_the_test_log_come_back_whole_inline_or_read_back(tmp_path, size, inline_write):
    """Small logs ride back on the eval command's own output, a log over the inline limit is read back;
    the eval script arrives whole either way (written first, or inside the command)."""
    from protege.agent.sandbox import open_sandbox
    from protege.config import SandboxConfig
    from protege.grading.harness import INLINE_LOG_BYTES, diff_and_eval
    from tests.agent.test_sandbox_escape import _make_repo, _task

    base = _make_repo(tmp_path / "repos" / "owner__calc")
    cfg = SandboxConfig(checkout_cache_dir=str(tmp_path / "cache"))
    with open_sandbox(cfg, _task(base), tmp_path / "repos") as sandbox:
        sandbox.run("echo changed >> README.md")
        script = f"python3 -c \"print('y' * {size})\"\necho done\n"
        diff, output, timed_out = diff_and_eval(sandbox, script, 60, inline_write)
        written = sandbox.read_file(".git/protege-grading/eval.sh")
    assert (size > INLINE_LOG_BYTES) == (size == 200_000)
    assert output == "y" * size + "\ndone\n" and not timed_out and written == script
    assert diff.startswith("diff --git a/README.md b/README.md") and "+changed" in diff
