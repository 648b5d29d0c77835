"""Errors that help (issue 14): `protege tasks verify` grades every instance it can and names each broken
one with a one-line reason, in one run that mixes the four broken cases with good instances."""

from __future__ import annotations

import json
import shutil

import pytest

from protege.environments import EnvironmentSpec
from protege.verify import collection_error

# pytest 9's own output for a conftest that cannot import (what the sandbox's log holds, abridged)
CONFTEST_LOG = """\
+ : '>>>>> Start Test Output'
+ python -m pytest -rA -p no:cacheprovider tests/test_cache.py
ImportError while loading conftest '/testbed/tests/conftest.py'.
tests/conftest.py:1: in <module>
    import protege_no_such_package
E   ModuleNotFoundError: No module named 'protege_no_such_package'
+ : '>>>>> End Test Output'
"""
MODULE_LOG = """\
==================================== ERRORS ====================================
____________________ ERROR collecting tests/test_pages.py _____________________
ImportError while importing test module '/testbed/tests/test_pages.py'.
Hint: make sure your test modules/packages have valid Python names.
Traceback:
tests/test_pages.py:3: in <module>
    from pagination import Paginator
E   ModuleNotFoundError: No module named 'pagination'
=========================== short test summary info ============================
ERROR tests/test_pages.py
"""


@pytest.mark.parametrize(
    ("log", "expected"),
    [
        (
            CONFTEST_LOG,
            "the tests error during collection: ModuleNotFoundError: No module named "
            "'protege_no_such_package' (in tests/conftest.py)",
        ),
        (
            MODULE_LOG,
            "the tests error during collection: ModuleNotFoundError: No module named 'pagination' "
            "(in tests/test_pages.py)",
        ),
        ("PASSED tests/test_cache.py::test_put_then_get\n", None),
    ],
)
def test_collection_error_names_the_exception_and_the_file(log, expected):
    assert collection_error(log) == expected


def _with_conftest_importing(task, module: str):
    """`task` whose test patch also adds a tests/conftest.py importing `module` (eval script to match)."""
    from protege.demo.taskset import eval_script

    conftest = (
        "diff --git a/tests/conftest.py b/tests/conftest.py\nnew file mode 100644\n"
        "--- /dev/null\n+++ b/tests/conftest.py\n@@ -0,0 +1 @@\n"
        f"+import {module}\n"
    )
    test_patch = task.test_patch + conftest
    return task.model_copy(
        update={
            "instance_id": f"{task.instance_id}-conftest",
            "test_patch": test_patch,
            "eval_script": eval_script(task.base_commit, test_patch),
        }
    )


def test_verify_reports_each_broken_instance_and_verifies_the_good_ones(tmp_path, capsys):
    if shutil.which("bwrap") is None:
        pytest.skip("needs bubblewrap")
    from protege.cli import main
    from protege.demo import build_demo_repos, demo_tasks

    repos = tmp_path / "repos"
    build_demo_repos(repos)
    good, other = demo_tasks("all")[:2]
    broken = {
        "missing repository": good.model_copy(update={"instance_id": "acme__gone-1", "repo": "acme/gone"}),
        # no eval script, and no test patch to derive one from (a classic row with one is derived and verifies)
        "missing eval script": good.model_copy(
            update={"instance_id": "acme__noeval-1", "eval_script": "", "test_patch": ""}
        ),
        "unavailable python": good.model_copy(
            update={"instance_id": "acme__py34-1", "environment": EnvironmentSpec(python="3.4")}
        ),
        "collection error": _with_conftest_importing(other, "protege_no_such_package"),
    }
    rows = [good, *broken.values(), other]
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(t.to_swebench()) + "\n" for t in rows))
    overrides = [
        f"tasks.repos_dir={repos}",
        f"eval.grade_logs_dir={tmp_path / 'grading'}",
        f"agent.sandbox.environments.cache_dir={tmp_path / 'envs'}",
    ]
    code = main(["tasks", "verify", str(path), *overrides, "--workers", "2"])
    out, err = capsys.readouterr()
    print(out)
    assert code == 1, out + err
    assert "Traceback" not in out + err
    assert "2/6 instance(s) ok" in out, out
    for task in (good, other):
        assert f"BROKEN {task.instance_id}:" not in out
    reasons = {
        "acme__gone-1": f"repository acme/gone is missing: no {repos / 'acme__gone'} (tasks.repos_dir is {repos})",
        "acme__noeval-1": "eval_script: empty, and no test_patch to derive it from",
        "acme__py34-1": "environment of row acme__py34-1: Python 3.4 is not available on this machine",
        broken["collection error"].instance_id: "the tests error during collection: ModuleNotFoundError: "
        "No module named 'protege_no_such_package' (in tests/conftest.py)",
    }
    lines = out.splitlines()
    for instance_id, reason in reasons.items():
        at = lines.index(f"BROKEN {instance_id}:")
        assert lines[at + 1].startswith(f"  - {reason}"), (instance_id, lines[at + 1])
        assert not any(line.startswith("  - ") for line in lines[at + 2 : at + 3]), (
            f"{instance_id}: one reason"
        )
    report = json.loads(next((tmp_path / "grading").glob("verify-*/verify.json")).read_text())
    assert set(report["broken"]) == set(reasons)
