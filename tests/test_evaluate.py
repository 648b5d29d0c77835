"""The eval phase: batch scheduling (hangs, crashes, progress), the gold-replay script, and end to end on
the demo eval split with real sandboxes and SWE-bench grading: gold replay -> Pass@1 = 1.0, empty
submissions -> 0.0, a re-run grades nothing new, an interrupted run is re-graded without re-running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from protege.agent.protocols import SandboxError
from protege.cli import main
from protege.cli.evaluate import expert_overrides
from protege.config import load_config
from protege.evaluate import (
    EvalError,
    ResultsWriter,
    Slot,
    gold_script,
    grade_row,
    run,
    run_pairs,
)
from protege.evaluate.report import GRADES, PREDICTIONS, REPORT_JSON, REPORT_MD, TRAJECTORIES, read_jsonl
from protege.trajectory import Trajectory, read_trajectories
from tests.grading_helpers import make_task

# Long enough for a trivial worker on a loaded 2-core machine, short enough to keep the test quick.
HANG_TIMEOUT_S = 1.0


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


# --------------------------------------------------------------------------------------------------
# The batch, with workers that need no sandbox
# --------------------------------------------------------------------------------------------------


def test_a_hung_and_a_crashed_instance_never_stall_the_batch(tmp_path):
    ok, hung, crashed, broken = (make_task(f"acme__calc-{i}") for i in range(4))
    release, late_write = threading.Event(), {}
    finished_late = threading.Event()

    def work(slot: Slot, writer: ResultsWriter) -> dict:
        task = slot.task
        if task is crashed:
            raise RuntimeError("policy server exploded")
        if task is broken:
            raise SandboxError("bwrap died")
        if task is hung:
            release.wait()
        trajectory = Trajectory(instance_id=task.instance_id, status="submitted", patch=task.patch)
        recorded = writer.episode(slot, trajectory)
        if task is hung:
            late_write["recorded"] = recorded
            finished_late.set()
        return grade_row(task, slot.attempt, True, "none")

    lines: list[str] = []
    writer = ResultsWriter(tmp_path, "m")
    pairs = [(t, 0) for t in (ok, hung, crashed, broken)]
    rows = run_pairs(pairs, work, writer, workers=2, timeout_s=HANG_TIMEOUT_S, progress=lines.append)
    release.set()
    assert finished_late.wait(timeout=30)

    by_id = {row["instance_id"]: row for row in rows}
    assert by_id[ok.instance_id]["resolved"] is True
    assert by_id[hung.instance_id]["reason"] == "timeout"
    assert "eval.instance_timeout_s=1" in by_id[hung.instance_id]["detail"]
    assert by_id[crashed.instance_id]["reason"] == "crashed"
    assert "policy server exploded" in by_id[crashed.instance_id]["detail"]
    # the abandoned worker's late episode was dropped: one trajectory per pair
    assert late_write["recorded"] is False
    statuses = {t.instance_id: t.status for t in read_trajectories(tmp_path / TRAJECTORIES)}
    assert _lines(tmp_path / TRAJECTORIES) == 4
    assert statuses == {
        ok.instance_id: "submitted",
        hung.instance_id: "timeout",
        crashed.instance_id: "policy_error",
        broken.instance_id: "sandbox_error",
    }
    assert _lines(tmp_path / GRADES) == 4 and _lines(tmp_path / PREDICTIONS) == 4
    assert lines[-1].startswith("[4/4] ") and "resolved 1/4" in lines[-1] and "ETA 0s" in lines[-1]


def test_later_attempts_get_their_own_predictions_file(tmp_path):
    task = make_task()

    def work(slot: Slot, writer: ResultsWriter) -> dict:
        writer.episode(
            slot, Trajectory(instance_id=task.instance_id, attempt=slot.attempt, patch=f"p{slot.attempt}")
        )
        return grade_row(task, slot.attempt, False, "tests_failed")

    run_pairs(
        [(task, 0), (task, 1)], work, ResultsWriter(tmp_path, "m"), workers=1, timeout_s=30, progress=print
    )
    assert read_jsonl(tmp_path / PREDICTIONS) == [
        {"instance_id": task.instance_id, "model_name_or_path": "m", "model_patch": "p0"}
    ]
    assert read_jsonl(tmp_path / "predictions.attempt-1.jsonl")[0]["model_patch"] == "p1"


def test_gold_script_applies_the_gold_patch(tmp_path):
    task = make_task()
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "calc.py").write_text("x = 1\n")
    turns = gold_script(task)
    assert [turn["tool"] for turn in turns] == ["bash", "submit"]
    subprocess.run(["bash", "-c", turns[0]["arguments"]["command"]], cwd=tmp_path, check=True)
    assert (tmp_path / "calc.py").read_text() == "x = 2\n"


def test_expert_overrides():
    assert expert_overrides("anthropic:claude-opus-4-1") == [
        "expert.backend=anthropic",
        "expert.model=claude-opus-4-1",
    ]
    assert expert_overrides("oracle") == ["expert.backend=oracle"]
    with pytest.raises(EvalError, match="BACKEND"):
        expert_overrides(":x")


# --------------------------------------------------------------------------------------------------
# End to end on the demo eval split (real bubblewrap sandboxes, real swebench grading)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repos_dir(tmp_path_factory) -> Path:
    from protege.demo import build_demo_repos

    path = tmp_path_factory.mktemp("repos")
    build_demo_repos(path)
    return path


def local_cfg(repos_dir: Path, tmp_path: Path, *extra: str):
    return load_config(
        "local",
        overrides=[
            f"tasks.repos_dir={repos_dir}",
            "agent.policy.backend=scripted",
            f"expert.cache_dir={tmp_path / 'expert-cache'}",
            f"eval.grade_logs_dir={tmp_path / 'grading'}",
            *extra,
        ],
    )


def test_gold_replay_resolves_every_eval_task_and_a_rerun_grades_nothing(repos_dir, tmp_path):
    cfg = local_cfg(repos_dir, tmp_path)
    out = tmp_path / "eval"
    first = run(cfg, "gold-replay", out, script="gold", progress=lambda line: None)
    summary = first["summary"]
    assert summary["pass_at_1"] == 1.0 and summary["resolved"] == summary["tasks"] == first["graded_now"] > 0
    assert sum(summary["failures"].values()) == 0
    predictions = read_jsonl(out / PREDICTIONS)
    assert len(predictions) == summary["tasks"]
    assert all(row["model_patch"].startswith("diff --git") for row in predictions)
    assert {row["model_name_or_path"] for row in predictions} == {"gold-replay"}
    assert json.loads((out / REPORT_JSON).read_text())["summary"]["pass_at_1"] == 1.0
    assert (out / REPORT_MD).is_file()

    counts = {name: _lines(out / name) for name in (PREDICTIONS, TRAJECTORIES, GRADES)}
    second = run(cfg, "gold-replay", out, script="gold", progress=lambda line: None)
    assert second["graded_now"] == 0 and second["skipped"] == summary["tasks"]
    assert {name: _lines(out / name) for name in counts} == counts
    assert second["summary"] == summary


def test_an_interrupted_run_is_regraded_without_rerunning_episodes(repos_dir, tmp_path):
    cfg = local_cfg(repos_dir, tmp_path)
    out = tmp_path / "eval"
    run(cfg, "gold-replay", out, script="gold", progress=lambda line: None)
    (out / GRADES).unlink()  # as if the run died after the episodes, before their grading

    def no_episodes(task, attempt):
        raise AssertionError(f"{task.instance_id} was re-run")

    again = run(cfg, "gold-replay", out, policy_for=no_episodes, progress=lambda line: None)
    assert again["summary"]["pass_at_1"] == 1.0 and again["graded_now"] == again["summary"]["tasks"]
    assert _lines(out / TRAJECTORIES) == again["summary"]["tasks"]


def test_empty_submissions_resolve_nothing(repos_dir, tmp_path):
    cfg = local_cfg(repos_dir, tmp_path)
    result = run(cfg, "empty", tmp_path / "eval", script="empty", progress=lambda line: None)
    summary = result["summary"]
    assert summary["pass_at_1"] == 0.0 and summary["resolved"] == 0
    assert summary["failures"]["no_submission"] == summary["tasks"] > 0
    assert summary["median_expert_cost_per_resolved_task"] is None


def test_an_unreachable_policy_server_fails_eval_with_the_reason(repos_dir, tmp_path, capsys):
    import socket

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "eval"
    overrides = [
        "agent.policy.backend=openai",
        f"agent.policy.base_url=http://127.0.0.1:{port}/v1",
        "agent.policy.model=served",
        "agent.policy.max_retries=0",
        f"tasks.repos_dir={repos_dir}",
        f"expert.cache_dir={tmp_path / 'expert-cache'}",
        f"eval.grade_logs_dir={tmp_path / 'grading'}",
    ]
    argv = ["eval", "--profile", "local", "--model", "served", "--out", str(out), "--no-track", "--no-upload"]
    assert main([*argv, *overrides]) == 3  # FAILED, not a score
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1, error
    assert error[0].startswith("error: eval: 4/4 episode(s) failed on infrastructure (policy_error 4)")
    assert "eval.max_infra_failure_share=0.1; no Pass@1 reported; first: " in error[0]
    assert f"127.0.0.1:{port}" in error[0] or "Connection refused" in error[0]
    report = json.loads((out / "report.json").read_text())  # the results are kept all the same
    assert report["summary"]["failures"]["policy_error"] == 4
    # Once the server is back (here: a scripted policy), a rerun plays the four outages again.
    lines = []
    cfg = local_cfg(repos_dir, tmp_path)
    again = run(cfg, "served", out, script="empty", progress=lines.append)
    assert lines[0].startswith(
        "eval: 4 episode(s) to run (4 again after an infrastructure failure), 0 already"
    )
    assert (
        again["summary"]["failures"]["policy_error"] == 0
        and again["summary"]["failures"]["no_submission"] == 4
    )
    assert _lines(out / PREDICTIONS) == _lines(out / TRAJECTORIES) == _lines(out / GRADES) == 4


def test_an_infrastructure_failure_ends_the_eval_mlflow_run_failed_with_the_reason(
    repos_dir, tmp_path, mlflow_server
):
    from protege.evaluate import TAG_FAILURE, InfraFailure
    from protege.tracking import Tracker

    cfg = local_cfg(
        repos_dir,
        tmp_path,
        "run_name=infra",
        "agent.policy.backend=openai",
        "agent.policy.model=m",
        "agent.policy.base_url=http://127.0.0.1:9/v1",
        "agent.policy.max_retries=0",
        "tasks.eval_ids=[protege-demo__minitemplate-1]",
    )
    tracker = Tracker(mlflow_server.tracking_config())
    with pytest.raises(InfraFailure, match=r"1/1 episode\(s\) failed on infrastructure \(policy_error 1\)"):
        run(cfg, "m", tmp_path / "eval", tracker, progress=lambda line: None)
    [phase] = tracker.nested_runs()
    assert phase.info.run_name == "eval" and phase.info.status == "FAILED"
    assert phase.data.tags[TAG_FAILURE].startswith("eval: 1/1 episode(s) failed on infrastructure")
    assert phase.data.metrics["failures.policy_error"] == 1.0  # the figures are kept, not reported as a score


def test_eval_serves_the_model_it_evaluates_through_vllm(repos_dir, tmp_path, monkeypatch, capsys):
    from tests.test_serving import FAKE, calls

    bin_dir, record, model = tmp_path / "bin", tmp_path / "vllm-calls.jsonl", tmp_path / "rl2-model"
    bin_dir.mkdir()
    model.mkdir()
    (model / "config.json").write_text("{}")
    (bin_dir / "vllm").write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    (bin_dir / "vllm").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_VLLM_RECORD", str(record))
    out = tmp_path / "eval"
    argv = [
        "eval",
        "--profile",
        "local",
        "--model",
        str(model),
        "--out",
        str(out),
        "--no-track",
        "--no-upload",
        "eval.serve=vllm",
        f"tasks.repos_dir={repos_dir}",
        "tasks.eval_ids=[protege-demo__minitemplate-1]",
        f"expert.cache_dir={tmp_path / 'expert-cache'}",
        f"eval.grade_logs_dir={tmp_path / 'grading'}",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    [call] = calls(record)
    assert call["argv"][:2] == ["serve", str(model)]
    report = json.loads((out / "report.json").read_text())
    assert report["run"]["policy_backend"] == "openai"
    # The served model submitted at once (the fake's one completion): a real score, not an outage.
    assert (
        report["summary"]["failures"]["no_submission"] == 1 and report["summary"]["infra_failure_share"] == 0
    )
    [trajectory] = read_trajectories(out / TRAJECTORIES)
    assert trajectory.status == "submitted" and trajectory.policy_input_tokens == 10


def test_resuming_with_another_model_is_refused(repos_dir, tmp_path):
    cfg = local_cfg(repos_dir, tmp_path)
    run(cfg, "empty", tmp_path / "eval", script="empty", progress=lambda line: None)
    with pytest.raises(EvalError, match="holds results of model 'empty'"):
        run(cfg, "other", tmp_path / "eval", script="empty", progress=lambda line: None)


def test_cli_eval_then_report(repos_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    overrides = [
        f"tasks.repos_dir={repos_dir}",
        "agent.policy.backend=scripted",
        f"expert.cache_dir={tmp_path}/c",
    ]
    argv = ["eval", "--model", "empty", "--script", "empty", "--out", str(out), "--no-track", "--no-upload"]
    assert main(argv + ["--profile", "local", *overrides]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{\n") :])["metrics"]["pass_at_1"] == 0.0
    (out / REPORT_MD).unlink()
    assert main(["report", str(out)]) == 0
    assert "Pass@1 0.0000" in capsys.readouterr().out
    assert (out / REPORT_MD).is_file()


def test_cli_report_names_a_bad_directory(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no graded episodes" in capsys.readouterr().err


@pytest.mark.slow
def test_metrics_and_report_reach_mlflow_and_the_store(repos_dir, tmp_path, mlflow_server, store):
    from protege.tracking import Tracker

    cfg = local_cfg(repos_dir, tmp_path, "run_name=evaltest")
    tracker = Tracker(mlflow_server.tracking_config())
    result = run(
        cfg, "gold-replay", tmp_path / "eval", tracker, store, script="gold", progress=lambda line: None
    )
    mlflow_run = tracker.get_run(result["mlflow_run_id"])
    assert mlflow_run.data.metrics["pass_at_1"] == 1.0
    assert mlflow_run.data.metrics["failures.tests_failed"] == 0.0
    artifacts = {a.path for a in tracker.client.list_artifacts(result["mlflow_run_id"], "report")}
    assert {"report/report.json", "report/report.md", "report/plots"} <= artifacts
    assert result["uri"] == store.uri("evaltest/eval")
    assert any(key.endswith("report.json") for key in store.list(result["uri"]))
