"""Phase synth: filters, resumable runs on the demo tasks, the Anthropic teacher path against a local mock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protege import synth
from protege.config import load_config
from protege.sft_data import read_dataset
from protege.trajectory import ExpertCall, Trajectory, read_trajectories
from tests.agent.anthropic_mock import MockLLMServer, anthropic_tool_use

GOLD = """diff --git a/pkg/mod.py b/pkg/mod.py
--- a/pkg/mod.py
+++ b/pkg/mod.py
@@ -1,3 +1,6 @@
 def clamp(x, lo, hi):
-    return x
+    if x < lo:
+        return lo
+    if x > hi:
+        return hi
+    return x
"""


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo repositories, built once for the module."""
    from protege.demo import build_demo_repos

    path = tmp_path_factory.mktemp("repos")
    build_demo_repos(path)
    return path


def local_cfg(repos: Path, tmp: Path, *overrides: str):
    """The local profile on the module's demo repositories, grading logs under `tmp`."""
    return load_config(
        "local",
        overrides=[f"tasks.repos_dir={repos}", f"eval.grade_logs_dir={tmp / 'grading'}", *overrides],
    )


def keys(path: Path) -> list[tuple[str, int]]:
    return [(t.instance_id, t.attempt) for t in read_trajectories(path)]


# --------------------------------------------------------------------------------------------------
# Filters
# --------------------------------------------------------------------------------------------------


def test_leak_filter_rejects_pasted_gold_lines_whatever_the_indentation():
    pasted = "Change clamp to:\n```\nif x < lo:\n  return lo\n   if x > hi:\n```"
    assert synth.find_leak(pasted, GOLD, 3) == ["if x < lo:", "return lo", "if x > hi:"]
    as_diff = "Apply this:\n+    if x < lo:\n+        return lo\n+    if x > hi:\n"
    assert synth.find_leak(as_diff, GOLD, 3)


def test_leak_filter_keeps_a_reply_that_names_the_file_or_pastes_too_little():
    assert (
        synth.find_leak("The bug is in `pkg/mod.py`, in `clamp`: it never compares x with lo/hi.", GOLD, 3)
        == []
    )
    assert synth.find_leak("Add:\n    if x < lo:\n        return lo\n", GOLD, 3) == []
    assert synth.find_leak("if x < lo:\nsomething else\nreturn lo\nif x > hi:", GOLD, 3) == []


def test_judge_rejects_a_leak_before_grading_and_counts_each_reason():
    from tests.grading_helpers import make_task

    task = make_task().model_copy(update={"patch": GOLD})

    def trajectory(reply: str, **fields) -> Trajectory:
        call = ExpertCall(step=3, question="what now?", reply=reply)
        base = {"instance_id": task.instance_id, "status": "submitted", "patch": GOLD, "expert_calls": [call]}
        return Trajectory(**{**base, **fields})

    def no_grading(*args):
        raise AssertionError("a leaking or unsubmitted trajectory must not be graded")

    leaking = synth.judge(
        trajectory("+    if x < lo:\n+        return lo\n+    if x > hi:"), task, 3, no_grading
    )
    assert leaking["reason"] == "leak" and not leaking["kept"]
    assert synth.judge(trajectory("", status="step_limit"), task, 3, no_grading)["reason"] == "not_submitted"
    assert synth.judge(trajectory("", status="timeout"), task, 3, no_grading)["reason"] == "timeout"
    assert synth.judge(trajectory("", patch=" "), task, 3, no_grading)["reason"] == "empty_patch"

    class Graded:
        def __init__(self, resolved: bool, reason: str) -> None:
            self.resolved, self.failure_reason, self.detail = resolved, reason, "d"

    naming = trajectory("Look at `clamp` in `pkg/mod.py`.")
    assert synth.judge(naming, task, 3, lambda t, p: Graded(True, "none"))["kept"]
    assert naming.resolved is True
    unresolved = synth.judge(trajectory("hint"), task, 3, lambda t, p: Graded(False, "tests_failed"))
    assert unresolved["reason"] == "unresolved"


def test_torn_last_line_is_cut_off_on_resume(tmp_path):
    path = tmp_path / synth.TRAJECTORIES
    whole = Trajectory(instance_id="a", attempt=0, status="submitted").model_dump_json()
    path.write_text(whole + "\n" + whole[:40])
    assert list(synth.load_recorded(path)) == [("a", 0)]
    assert path.read_text() == whole + "\n"


# --------------------------------------------------------------------------------------------------
# Runs on the demo tasks with the oracle teacher
# --------------------------------------------------------------------------------------------------

TWO = "[protege-demo__daterange-1,protege-demo__textstats-1]"


def test_interrupted_run_resumes_without_redoing_episodes_and_exports_the_same_dataset(repos, tmp_path):
    cfg = local_cfg(repos, tmp_path, f"tasks.train_ids={TWO}", "synth.concurrency=1")
    reference = synth.run(cfg, tmp_path / "reference", progress=lambda line: None)
    assert reference["summary"]["kept"] == 2

    out = tmp_path / "interrupted"
    stopped = synth.run(cfg, out, progress=lambda line: None, max_episodes=1)
    assert stopped["ran_now"] == 1 and stopped["skipped"] == {"stopped": 1}
    assert len(keys(out / synth.TRAJECTORIES)) == 1
    with (out / synth.TRAJECTORIES).open("a") as handle:  # killed while writing the next record
        handle.write('{"format_version": 1, "instance_id": "protege-demo__te')
    resumed = synth.run(cfg, out, progress=lambda line: None)
    assert resumed["ran_now"] == 1
    recorded = keys(out / synth.TRAJECTORIES)
    assert len(recorded) == len(set(recorded)) == 2
    assert resumed["digest"] == reference["digest"]
    again = synth.run(cfg, out, progress=lambda line: None)
    assert again["ran_now"] == 0 and again["digest"] == reference["digest"]


@pytest.mark.slow
def test_oracle_teacher_on_the_eight_training_tasks_keeps_every_trajectory(repos, tmp_path):
    cfg = local_cfg(repos, tmp_path)
    lines: list[str] = []
    result = synth.run(cfg, tmp_path / "full", progress=lines.append)
    assert result["summary"]["tasks_tried"] == 8
    assert result["summary"]["kept"] >= 8
    records = read_dataset(result["dataset"])
    assert len(records) >= 8
    assert all(record["meta"]["expert_calls"] >= 1 for record in records)
    card = json.loads((Path(result["dataset"]).parent / "dataset_card.json").read_text())
    assert card["teacher_backend"] == "oracle" and card["policy_backends"] == ["oracle-teacher"]
    assert card["expert_gold_patch"] is True and card["sha256"] == result["digest"]
    assert card["expert_calls_per_trajectory"]["min"] >= 1
    assert any("kept 8" in line and "ETA" in line for line in lines)
    # an interrupted run over the same tasks, resumed, exports the same bytes
    out = tmp_path / "stopped"
    first = synth.run(cfg, out, progress=lambda line: None, max_episodes=3)
    assert first["ran_now"] == 3 and first["skipped"]["stopped"] == 5
    resumed = synth.run(cfg, out, progress=lambda line: None)
    assert resumed["ran_now"] == 5
    assert len(set(keys(out / synth.TRAJECTORIES))) == len(keys(out / synth.TRAJECTORIES)) == 8
    assert resumed["digest"] == result["digest"]


# --------------------------------------------------------------------------------------------------
# The Anthropic teacher against a local Messages API server
# --------------------------------------------------------------------------------------------------


def test_anthropic_teacher_produces_a_trajectory_in_the_same_format(repos, tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    with MockLLMServer(api_key="test-key") as server:
        server.push(
            anthropic_tool_use(
                "bash", {"command": "git grep -n 'def date_range'"}, text="Find the function."
            ),
            anthropic_tool_use("ask_expert", {"question": "Why is the end date missing?"}, text="Ask."),
            anthropic_tool_use(
                "str_replace_editor",
                {
                    "command": "str_replace",
                    "path": "daterange/ranges.py",
                    "old_str": "while current < end:",
                    "new_str": "while current <= end:",
                },
                text="Include the end date.",
            ),
            anthropic_tool_use("submit", {}, text="Done."),
        )
        cfg = local_cfg(
            repos,
            tmp_path,
            "tasks.train_ids=[protege-demo__daterange-1]",
            "synth.teacher=anthropic",
            "synth.teacher_model=mock-model",
            f"agent.policy.base_url={server.url}",
            "agent.policy.max_retries=0",
        )
        result = synth.run(cfg, tmp_path / "anthropic", progress=lambda line: None)
        requests = list(server.requests)
    (trajectory,) = read_trajectories(tmp_path / "anthropic" / synth.TRAJECTORIES)
    assert trajectory.policy_backend == "anthropic" and trajectory.policy_model == "mock-model"
    assert trajectory.extra["synth"]["kept"] and trajectory.resolved
    assert [a.tool for a in trajectory.actions] == ["bash", "ask_expert", "str_replace_editor", "submit"]
    assert trajectory.expert_calls[0].status == "ok" and trajectory.expert_backend == "oracle"
    assert [m.provenance for m in trajectory.messages] == [
        "system",
        "task",
        "policy",
        "tool",
        "policy",
        "expert",
        "policy",
        "tool",
        "policy",
        "tool",
    ]
    # tool_use round trips: the second request answers the first call with a tool_result of its id
    first_call = requests[0]
    second = requests[1].body["messages"]
    assert first_call.body["tools"][0]["name"] == "bash"
    results = [
        b for m in second if m["role"] == "user" for b in m["content"] if b.get("type") == "tool_result"
    ]
    assert results and results[0]["tool_use_id"] == trajectory.messages[2].tool_calls[0].id
    assert result["summary"]["teacher_backend"] == "anthropic" and result["summary"]["kept"] == 1
    (record,) = read_dataset(result["dataset"])
    assert record["meta"]["policy_backend"] == "anthropic" and record["meta"]["cost_usd"] > 0


def test_episodes_go_to_the_store_as_they_finish_and_a_fresh_machine_resumes_from_it(repos, tmp_path, store):
    bucket = store.uri().removeprefix("s3://").split("/")[0]
    cfg = local_cfg(repos, tmp_path, "tasks.train_ids=[protege-demo__daterange-1]", f"store.bucket={bucket}")
    first = synth.run(cfg, tmp_path / "pod-1", store=store, progress=lambda line: None)
    prefix = f"s3://{bucket}/{cfg.run_name}/synth"
    assert store.list(f"{prefix}/episodes/") == [f"{prefix}/episodes/protege-demo__daterange-1.0.json"]
    assert first["uri"] == f"{prefix}/dataset" and store.exists(f"{prefix}/dataset")
    lines: list[str] = []
    again = synth.run(cfg, tmp_path / "pod-2", store=store, progress=lines.append)
    assert again["ran_now"] == 0 and again["digest"] == first["digest"]
    assert any("restored 1 recorded episode" in line for line in lines)


@pytest.mark.slow
def test_dataset_is_logged_to_mlflow_as_an_input_with_its_digest(repos, tmp_path, mlflow_server):
    from protege.tracking import Tracker

    tracker = Tracker(mlflow_server.tracking_config())
    cfg = local_cfg(repos, tmp_path, "tasks.train_ids=[protege-demo__daterange-1]")
    result = synth.run(cfg, tmp_path / "tracked", tracker=tracker, progress=lambda line: None)
    (dataset,) = tracker.dataset_inputs(result["mlflow_run_id"])
    assert dataset.dataset.name == synth.DATASET_NAME
    assert dataset.dataset.digest == result["digest"][: synth.MLFLOW_DIGEST_CHARS]
    assert {t.key: t.value for t in dataset.tags}["sha256"] == result["digest"]
    assert tracker.get_run(result["mlflow_run_id"]).data.metrics["kept"] == 1
    # The sample of episodes traced (tracking.trace_sample=2; this run has one episode).
    (trace,) = tracker.client.search_traces(locations=[tracker.experiment_id], run_id=result["mlflow_run_id"])
    assert trace.info.tags["protege.instance_id"] == "protege-demo__daterange-1"
    assert trace.info.tags["protege.phase"] == "synth"
