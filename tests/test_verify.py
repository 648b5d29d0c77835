"""Verification verdicts: each way an instance can be broken is named, by id, from real swebench grading
of harness-shaped logs (the end-to-end runs on the demo set are in tests/test_grading.py)."""

from __future__ import annotations

import pytest

from protege.grading import result_from_log
from protege.verify import InstanceVerdict, VerifyReport, empty_problems, gold_problems
from tests.grading_helpers import make_task, pytest_log, write_log

NEW, OLD = "test_calc.py::test_new", "test_calc.py::test_old"


def graded(tmp_path, statuses, *, patch="gold", hint="none", f2p=(NEW,), name="g"):
    task = make_task(f2p=f2p)
    text = pytest_log(statuses) if statuses is not None else "no markers at all\n"
    log = write_log(tmp_path / name, text)
    return result_from_log(
        task, task.patch if patch == "gold" else "", log, hint=hint, detail="boom" * (hint != "none")
    )


@pytest.mark.parametrize(
    ("statuses", "f2p", "expected"),
    [
        ({NEW: "PASSED", OLD: "PASSED"}, (NEW,), []),
        (
            {NEW: "FAILED", OLD: "PASSED"},
            (NEW,),
            [f"gold patch does not resolve: FAIL_TO_PASS test {NEW} failed (FAILED)"],
        ),
        (
            {NEW: "PASSED", OLD: "PASSED"},
            ("test_calc.py::test_typo",),
            ["gold patch does not resolve: FAIL_TO_PASS test test_calc.py::test_typo not found in log"],
        ),
        (
            {NEW: "PASSED", OLD: "ERROR"},
            (NEW,),
            [f"gold patch does not resolve: PASS_TO_PASS test {OLD} failed (ERROR)"],
        ),
        (None, (NEW,), ["gold patch does not resolve: no test results could be parsed from"]),
    ],
)
def test_gold_problems_name_the_failing_test(tmp_path, statuses, f2p, expected):
    problems = gold_problems(graded(tmp_path, statuses, f2p=f2p))
    assert len(problems) == len(expected)
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(start)


def test_gold_infra_failure_is_reported_with_its_reason(tmp_path):
    result = graded(tmp_path, {NEW: "PASSED", OLD: "PASSED"}, hint="timeout")
    result.resolved, result.failure_reason = False, "timeout"
    assert gold_problems(result) == ["gold patch does not resolve: timeout: boom"]


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ({NEW: "FAILED", OLD: "PASSED"}, []),
        ({OLD: "PASSED"}, []),  # the F2P test not collecting at all is a failure too
        (
            {NEW: "PASSED", OLD: "PASSED"},
            [
                "empty patch resolves: the tests do not detect a missing fix",
                f"FAIL_TO_PASS test {NEW} passes without the fix",
            ],
        ),
        ({NEW: "FAILED", OLD: "FAILED"}, [f"PASS_TO_PASS test {OLD} failed (FAILED) without the fix"]),
        (None, ["empty patch: no test results could be parsed from"]),
    ],
)
def test_empty_problems(tmp_path, statuses, expected):
    problems = empty_problems(graded(tmp_path, statuses, patch="empty", hint="empty_patch"))
    assert len(problems) == len(expected)
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(start)


def test_report_table_lists_broken_instances_by_id(tmp_path):
    good = graded(tmp_path, {NEW: "PASSED", OLD: "PASSED"}, name="a")
    bad_empty = graded(tmp_path, {NEW: "PASSED", OLD: "PASSED"}, patch="empty", hint="empty_patch", name="b")
    fine_empty = graded(tmp_path, {NEW: "FAILED", OLD: "PASSED"}, patch="empty", hint="empty_patch", name="c")
    verdicts = [
        InstanceVerdict("acme__calc-1", good, fine_empty, []),
        InstanceVerdict("acme__calc-2", good, bad_empty, empty_problems(bad_empty)),
    ]
    report = VerifyReport(verdicts)
    table = report.table()
    assert not report.ok and [v.instance_id for v in report.broken] == ["acme__calc-2"]
    assert "1/2 instance(s) ok" in table
    assert "BROKEN acme__calc-2:" in table and "BROKEN acme__calc-1" not in table
    assert report.to_dict()["broken"] == {"acme__calc-2": empty_problems(bad_empty)}


# --------------------------------------------------------------------------------------------------
# End to end on the bundled demo set, in real bubblewrap sandboxes
# --------------------------------------------------------------------------------------------------


def _demo_cfg(tmp_path):
    from protege.config import ProtegeConfig

    return ProtegeConfig.model_validate(
        {"agent": {"sandbox": {"backend": "local"}}, "eval": {"grade_logs_dir": str(tmp_path / "grading")}}
    )


@pytest.fixture(scope="module")
def demo_repos(tmp_path_factory):
    import shutil

    if shutil.which("bwrap") is None:
        pytest.skip("needs bubblewrap")
    from protege.demo import build_demo_repos

    dest = tmp_path_factory.mktemp("demo-repos")
    build_demo_repos(dest)
    return dest


def _assert_all_ok(report):
    assert report.ok, report.table()
    for verdict in report.verdicts:
        assert verdict.gold.resolved and verdict.gold.failure_reason == "none", verdict.instance_id
        assert not verdict.empty.resolved and verdict.empty.failure_reason == "empty_patch", (
            verdict.instance_id
        )
        assert verdict.empty.tests_status["FAIL_TO_PASS"]["success"] == [], verdict.instance_id


def test_two_demo_tasks_verify(demo_repos, tmp_path):
    from protege.demo import demo_tasks
    from protege.verify import verify_task_set

    tasks = demo_tasks("all")[:2]
    seen = []
    report = verify_task_set(tasks, _demo_cfg(tmp_path), demo_repos, workers=2, on_verdict=seen.append)
    _assert_all_ok(report)
    assert sorted(v.instance_id for v in seen) == sorted(t.instance_id for t in tasks)
    assert len(list((tmp_path / "grading").glob("verify-*/verify.json"))) == 1


@pytest.mark.slow  # ~30 s on 2 busy cores: 24 gradings
def test_whole_demo_set_verifies(demo_repos, tmp_path):
    from protege.demo import demo_tasks
    from protege.verify import verify_task_set

    tasks = demo_tasks("all")
    report = verify_task_set(tasks, _demo_cfg(tmp_path), demo_repos, workers=2)
    _assert_all_ok(report)
    assert len(report.verdicts) == len(tasks)
    print(report.table())


def test_cli_reports_a_wrong_fail_to_pass_name_by_id(demo_repos, tmp_path, capsys):
    import json

    from protege.cli import main
    from protege.demo import demo_tasks

    good = demo_tasks("all")[0]
    typo = f"{good.FAIL_TO_PASS[0]}_typo"
    wrong = good.model_copy(update={"instance_id": f"{good.instance_id}-wrong", "FAIL_TO_PASS": [typo]})
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(t.to_swebench()) + "\n" for t in (good, wrong)))
    overrides = [f"tasks.repos_dir={demo_repos}", f"eval.grade_logs_dir={tmp_path / 'grading'}"]
    code = main(["tasks", "verify", str(path), *overrides, "--workers", "2"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert f"BROKEN {wrong.instance_id}:" in out and f"BROKEN {good.instance_id}:" not in out
    assert f"gold patch does not resolve: FAIL_TO_PASS test {typo} not found in log" in out
    assert "1/2 instance(s) ok" in out
