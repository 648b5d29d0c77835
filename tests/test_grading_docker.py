"""Docker backend at its boundary (no daemon here): the harness gets the right call, and what the harness
leaves on disk (written here the way `run_instance` writes it) comes back as the right GradeResults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protege.config import ProtegeConfig
from protege.grading import GradeJob, GradingError, grade_batch
from protege.grading.docker import container_limits, docker_reachable, grade_batch_docker, harness_main
from tests.grading_helpers import make_task, pytest_log

NEW, OLD = "test_calc.py::test_new", "test_calc.py::test_old"


class FakeDockerClient:
    def __init__(self, alive: bool):
        self.alive = alive

    def ping(self) -> bool:
        if not self.alive:
            raise ConnectionError("Error while fetching server API version")
        return True


def docker_cfg() -> ProtegeConfig:
    return ProtegeConfig.model_validate(
        {"agent": {"sandbox": {"backend": "docker"}}, "eval": {"grade_timeout_s": 77}}
    )


class FakeHarness:
    """Writes what swebench's run_instance writes: report.json + test_output.txt when it grades, only
    run_instance.log (with APPLY_PATCH_FAIL) when the patch did not apply, a 'Timeout error' line on timeout."""

    def __init__(self, outcomes: dict[str, str]):
        self.outcomes = outcomes
        self.calls: list[tuple[dict, Path]] = []

    def __call__(self, spec_path: Path, working_dir: Path) -> None:
        from swebench.harness.constants import APPLY_PATCH_FAIL, RUN_EVALUATION_LOG_DIR
        from swebench.harness.grading import get_eval_report
        from swebench.harness.utils import make_test_spec

        spec = json.loads(spec_path.read_text())
        self.calls.append((spec, working_dir))
        instances = [json.loads(x) for x in Path(spec["instances_path"]).read_text().splitlines()]
        preds = {
            p["instance_id"]: p
            for p in map(json.loads, Path(spec["predictions_path"]).read_text().splitlines())
        }
        for instance in instances:
            pred = preds[instance["instance_id"]]
            where = (
                working_dir
                / RUN_EVALUATION_LOG_DIR
                / spec["run_id"]
                / pred["model_name_or_path"]
                / instance["instance_id"]
            )
            where.mkdir(parents=True)
            outcome = self.outcomes[instance["instance_id"]]
            if outcome == "apply_fail":
                (where / "run_instance.log").write_text(f"{APPLY_PATCH_FAIL}:\nerror: corrupt patch\n")
                continue
            statuses = {NEW: "PASSED" if outcome == "pass" else "FAILED", OLD: "PASSED"}
            (where / "test_output.txt").write_text(pytest_log(statuses))
            if outcome == "timeout":
                with open(where / "test_output.txt", "a") as handle:
                    handle.write(f"\n\nTimeout error: {spec['timeout']} seconds exceeded.")
                continue
            report = get_eval_report(make_test_spec(instance), pred, str(where / "test_output.txt"), True)
            (where / "report.json").write_text(json.dumps(report))


def test_docker_reachable_asks_the_daemon():
    assert docker_reachable(lambda: FakeDockerClient(True))
    assert not docker_reachable(lambda: FakeDockerClient(False))


def test_no_daemon_is_a_clear_error(tmp_path):
    jobs = [GradeJob(make_task(), make_task().patch)]
    with pytest.raises(GradingError, match="no Docker daemon"):
        grade_batch_docker(
            jobs,
            docker_cfg(),
            run_id="r",
            logs_dir=tmp_path,
            workers=2,
            harness=FakeHarness({}),
            client_factory=lambda: FakeDockerClient(False),
        )


def test_batch_goes_to_the_harness_and_reports_come_back(tmp_path):
    tasks = {i: make_task(f"acme__calc-{i}") for i in (1, 2, 3)}
    outcomes = {"acme__calc-1": "pass", "acme__calc-2": "apply_fail", "acme__calc-3": "timeout"}
    harness = FakeHarness(outcomes | {"acme__calc-1": "fail"})
    jobs = [GradeJob(t, t.patch, "gold") for t in tasks.values()] + [
        GradeJob(tasks[1], "", "gold", run_tests_on_empty=True)
    ]
    gold_harness = FakeHarness(outcomes)

    def harness_by_group(spec_path: Path, working_dir: Path) -> None:
        spec = json.loads(spec_path.read_text())
        (harness if spec["skip_patch"] else gold_harness)(spec_path, working_dir)

    results = grade_batch_docker(
        jobs,
        docker_cfg(),
        run_id="r",
        logs_dir=tmp_path,
        workers=3,
        harness=harness_by_group,
        client_factory=lambda: FakeDockerClient(True),
    )

    (gold_spec, gold_dir), (empty_spec, _) = gold_harness.calls[0], harness.calls[0]
    assert gold_spec["skip_patch"] is False and empty_spec["skip_patch"] is True
    assert gold_spec["timeout"] == 77 and gold_spec["max_workers"] == 3 and gold_spec["run_id"] == "r.gold"
    sent = [json.loads(x) for x in Path(gold_spec["predictions_path"]).read_text().splitlines()]
    assert [p["model_patch"] for p in sent] == [t.patch for t in tasks.values()]
    assert [r.failure_reason for r in results] == ["none", "patch_apply_failed", "timeout", "empty_patch"]
    assert [r.resolved for r in results] == [True, False, False, False]
    assert results[0].tests_status["FAIL_TO_PASS"]["success"] == [NEW]
    assert results[1].patch_successfully_applied is False
    assert results[3].tests_status["FAIL_TO_PASS"]["failure"] == [NEW]
    assert Path(results[0].log_path).is_relative_to(gold_dir)


def test_grade_batch_picks_the_docker_backend_from_config(tmp_path, monkeypatch):
    import docker

    monkeypatch.setattr(docker, "from_env", lambda **_: FakeDockerClient(False))
    with pytest.raises(GradingError, match="no Docker daemon"):
        grade_batch([GradeJob(make_task(), make_task().patch)], docker_cfg(), tmp_path, logs_dir=tmp_path)


def test_harness_main_calls_swebench_run_instances(tmp_path, monkeypatch):
    import swebench.harness.run_evaluation as run_evaluation

    calls = []
    monkeypatch.setattr(run_evaluation, "run_instances", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setattr("resource.setrlimit", lambda *a: None)
    for name in (
        "CONTAINER_USER",
        "create_container",
        "copy_to_container",
        "exec_run_with_timeout",
        "cleanup_container",
    ):
        monkeypatch.setattr(run_evaluation, name, getattr(run_evaluation, name))  # restored afterwards
    task = make_task()
    (tmp_path / "i.jsonl").write_text(json.dumps(task.to_swebench()) + "\n")
    pred = {"instance_id": task.instance_id, "model_name_or_path": "m", "model_patch": task.patch}
    (tmp_path / "p.jsonl").write_text(json.dumps(pred) + "\n")
    spec = {
        "instances_path": str(tmp_path / "i.jsonl"),
        "predictions_path": str(tmp_path / "p.jsonl"),
        "max_workers": 2,
        "run_id": "r.m",
        "timeout": 60,
        "skip_patch": False,
        "container": container_limits(docker_cfg()),
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    harness_main(tmp_path / "spec.json")
    ((args, kwargs),) = calls
    assert args == ({task.instance_id: pred}, [task.to_swebench()], 2, "r.m", 60)
    assert kwargs == {"rewrite_reports": False, "skip_patch": False}
    # the harness now makes hardened containers, runs as the sandbox user and writes files through exec
    assert run_evaluation.CONTAINER_USER == "10001:10001"
    assert run_evaluation.create_container.__module__ == "protege.grading.docker"
    assert run_evaluation.copy_to_container.__module__ == "protege.grading.docker"
    assert run_evaluation.cleanup_container.__module__ == "protege.grading.docker"


def test_a_later_attempt_is_graded_afresh_not_read_from_the_first_report(tmp_path):
    # The harness returns an existing report.json as is; each call must grade in a folder of its own.
    task = make_task()
    for outcome, resolved in (("fail", False), ("pass", True)):
        (result,) = grade_batch_docker(
            [GradeJob(task, task.patch, "model")],
            docker_cfg(),
            run_id="grade",
            logs_dir=tmp_path,
            workers=1,
            harness=FakeHarness({task.instance_id: outcome}),
            client_factory=lambda: FakeDockerClient(True),
        )
        assert result.resolved is resolved
    attempts = sorted(p.name for p in (tmp_path / "grade" / "docker" / "grade.model").iterdir())
    assert attempts == ["attempt-1", "attempt-2"]
