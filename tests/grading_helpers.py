"""A hand-built SWE-bench-style task and harness-shaped pytest logs, for grading tests that need no sandbox."""

from __future__ import annotations

from pathlib import Path

from protege.tasks import TaskInstance

GOLD = "diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n"
TEST_PATCH = GOLD.replace("calc.py", "test_calc.py")
EVAL_SCRIPT = """#!/bin/bash
set -uxo pipefail
cd /testbed
git apply -v - <<'EOF_114329324912'
{test_patch}
EOF_114329324912
: '>>>>> Start Test Output'
pytest -rA test_calc.py
: '>>>>> End Test Output'
git checkout HEAD -- test_calc.py
"""


def make_task(
    instance_id: str = "acme__calc-1", f2p=("test_calc.py::test_new",), p2p=("test_calc.py::test_old",)
):
    return TaskInstance(
        instance_id=instance_id,
        repo="acme/calc",
        base_commit="0123456789abcdef0123456789abcdef01234567",
        problem_statement="x should be 2",
        patch=GOLD,
        test_patch=TEST_PATCH,
        FAIL_TO_PASS=list(f2p),
        PASS_TO_PASS=list(p2p),
        version="1.0",
        image="acme/calc:latest",
        eval_script=EVAL_SCRIPT.format(test_patch=TEST_PATCH.rstrip("\n")),
    )


def pytest_log(statuses: dict[str, str], exit_code: int | None = None) -> str:
    """What the harness writes to test_output.txt for a pytest -rA run with these outcomes."""
    failed = any(s in ("FAILED", "ERROR") for s in statuses.values())
    code = (1 if failed else 0) if exit_code is None else exit_code
    summary = "\n".join(f"{status} {test}" for test, status in statuses.items())
    return (
        "+ cd /testbed\n+ : '>>>>> Start Test Output'\n+ pytest -rA test_calc.py\n"
        "============================= test session starts ==============================\n"
        f"=========================== short test summary info ============================\n{summary}\n"
        f"+ SWEBENCH_TEST_EXIT_CODE={code}\n+ : '>>>>> End Test Output'\n"
        f"+ echo '>>>>> Test Exit Code: {code}'\n>>>>> Test Exit Code: {code}\n"
    )


def write_log(folder: Path, text: str, name: str = "test_output.txt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path
