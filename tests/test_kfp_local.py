"""`protege run`: services check, arguments, the task clock, synth's run adopted into the parent run,
and (slow) the whole pipeline under kfp.local against real s3rver + MLflow servers."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import pytest

from protege import tracking
from protege.cli import main
from protege.config import load_config
from protege.pipeline import local as kfp_local
from protege.pipeline import steps as kfp_steps
from protege.services import free_port

# --------------------------------------------------------------------------------------------------
# before the run
# --------------------------------------------------------------------------------------------------


def test_run_refuses_to_start_when_the_services_are_down_and_names_them(tmp_path: Path, capsys) -> None:
    s3, mlflow = f"127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    argv = ["run", f"store.endpoint={s3}", f"tracking.uri={mlflow}", f"services.data_dir={tmp_path}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"artifact store {s3}" in err and f"MLflow {mlflow}" in err
    assert "protege services up" in err
    assert not (tmp_path / kfp_local.PIPELINE_ROOT).exists()  # nothing ran


def test_service_problems_is_empty_when_both_answer(mlflow_server) -> None:
    cfg = load_config("local").model_copy(
        update={"store": mlflow_server.store_config(), "tracking": mlflow_server.tracking_config()}
    )
    assert kfp_local.service_problems(cfg) == []


@pytest.mark.parametrize(
    ("items", "error"),
    [(["base_model"], "expected key=value"), (["gpu_count=2"], "unknown parameter 'gpu_count'")],
)
def test_bad_params_are_named(items: list[str], error: str) -> None:
    with pytest.raises(kfp_local.RunError, match=error):
        kfp_local.parse_params(items)


def test_the_steps_rebuild_the_clients_config_from_the_pipeline_arguments(tmp_path: Path) -> None:
    user = tmp_path / "my.yaml"
    user.write_text("sft:\n  max_steps: 3\ntasks:\n  eval_ids: [a-1, b-2]\n  train: demo:all\n")
    overrides = [*kfp_local.file_overrides(str(user)), "rl.group_size=4"]
    args = kfp_local.pipeline_arguments(
        "local", overrides, "demo-1", kfp_local.parse_params(["base_model=tiny"])
    )
    assert args["profile"] == "local" and args["base_model"] == "tiny"
    step = kfp_steps.step_config(args["profile"], args["overrides"], model__base=args["base_model"])
    client = load_config("local", user, ["rl.group_size=4", "run_name=demo-1"])
    assert step == client
    assert (step.run_name, step.sft.max_steps, step.tasks.eval_ids) == ("demo-1", 3, ["a-1", "b-2"])


# --------------------------------------------------------------------------------------------------
# the task clock reads kfp.local's own log records
# --------------------------------------------------------------------------------------------------


def _record(message: str, created: float) -> logging.LogRecord:
    record = logging.LogRecord("root", logging.INFO, __file__, 0, message, None, None)
    record.created = created
    return record


def test_task_clock_times_each_task_from_kfp_local_log_records() -> None:
    from kfp.local import logging_utils, status

    clock = kfp_local.TaskClock()
    name = logging_utils.format_task_name
    records = [
        (f"Executing task {name('synth')}", 100.0),
        (
            f"Task {name('synth')} finished with status {logging_utils.format_status(status.Status.SUCCESS)}",
            112.5,
        ),
        (f"Executing task {name('sft')}", 113.0),
        (
            f"Task {name('sft')} finished with status {logging_utils.format_status(status.Status.FAILURE)}",
            120.0,
        ),
        (f"Executing task {name('rl1')}", 121.0),
        ("Streamed logs:", 121.5),
    ]
    assert all(clock.filter(_record(message, at)) for message, at in records)  # never drops a record
    assert clock.step("synth") == ("SUCCESS", 12.5)
    assert clock.step("sft") == ("FAILURE", 7.0)
    assert clock.step("rl1") == ("running", None)
    assert clock.step("eval") == ("not run", None)


def test_a_failed_run_closes_its_parent_run_as_failed(mlflow_server, monkeypatch) -> None:
    from protege.tracking import PARENT_RUN_ENV, Tracker

    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
    cfg = load_config(
        "local",
        overrides=[
            f"tracking.uri={mlflow_server.mlflow_url}",
            f"tracking.experiment=fail-{uuid.uuid4().hex[:8]}",
        ],
    )
    tracker = Tracker(cfg.tracking)
    parent = tracker.start_pipeline("failing")
    for phase in ("sft", "rl1"):
        with tracker.phase(phase):
            pass
    killed = tracker.client.create_run(
        tracker.experiment_id,
        run_name="rl2",
        tags={  # a pod killed mid-phase
            "mlflow.parentRunId": parent,
            "protege.phase": "rl2",
            "protege.pipeline_run_id": parent,
        },
    ).info.run_id
    assert kfp_local.fail_parent_run(cfg, "") == ""  # no parent yet (sft never ran): nothing to close
    assert kfp_local.fail_parent_run(cfg, parent, "local run r: rl2 failed") == "rl2"
    run = Tracker(cfg.tracking).get_run(parent)
    assert run.info.status == "FAILED"
    assert run.data.tags[kfp_steps.TAG_FAILED_STEP] == "rl2"
    assert run.data.tags[kfp_steps.TAG_FAILURE] == "local run r: rl2 failed"
    assert tracker.get_run(killed).info.status == "FAILED"  # never left RUNNING


# --------------------------------------------------------------------------------------------------
# synth's nested run is adopted into the pipeline run that sft opens
# --------------------------------------------------------------------------------------------------


def test_sft_adopts_the_synth_run_into_the_new_parent_run(mlflow_server, monkeypatch) -> None:
    from protege.tracking import PARENT_RUN_ENV

    experiment = f"adopt-{uuid.uuid4().hex[:8]}"
    cfg = load_config(
        "local", overrides=[f"tracking.uri={mlflow_server.mlflow_url}", f"tracking.experiment={experiment}"]
    )
    monkeypatch.setenv(PARENT_RUN_ENV, "stale-id-from-the-shell")
    synth_tracker = kfp_steps.step_tracker(cfg, "synth")
    with synth_tracker.phase("synth", params={"teacher": "oracle:oracle"}) as phase:
        synth_tracker.log_metrics(phase.run_id, {"kept": 8, "episodes": 8})
        synth_tracker.log_dataset(phase.run_id, "synth-sft", "s3://b/r/synth/dataset", digest="d" * 32)
    source = synth_tracker.get_run(phase.run_id)
    assert synth_tracker.get_run(synth_tracker.parent_run_id).info.run_name == "protege.synth"

    tracker = kfp_steps.open_pipeline_run(cfg, "kfp-7", phase.run_id, "s3://b/r/synth/dataset")
    (copy,) = tracker.nested_runs()
    assert copy.info.run_id != phase.run_id and copy.info.run_name == "synth"
    assert copy.data.tags[tracking.TAG_ADOPTED_FROM] == phase.run_id
    assert copy.data.metrics == {"kept": 8.0, "episodes": 8.0}
    assert copy.data.params == {"teacher": "oracle:oracle"}
    assert (copy.info.start_time, copy.info.end_time) == (source.info.start_time, source.info.end_time)
    assert copy.info.status == "FINISHED"
    (dataset,) = copy.inputs.dataset_inputs
    assert (dataset.dataset.name, dataset.dataset.digest) == ("synth-sft", "d" * 32)
    parent = tracker.get_run(tracker.parent_run_id)
    assert parent.data.tags[kfp_steps.TAG_KFP_RUN] == "kfp-7"


# --------------------------------------------------------------------------------------------------
# the whole pipeline under kfp.local (slow: minutes)
# --------------------------------------------------------------------------------------------------

SMALL = [
    "sft.max_steps=2",
    "agent.policy.max_new_tokens=32",
    "agent.max_format_errors=1",
    "tasks.train_ids=[protege-demo__csvcols-1, protege-demo__daterange-1]",
    "tasks.eval_ids=[protege-demo__minitemplate-1]",
    "rl.total_steps=2",
    "rl.stage_one_steps=1",
    "rl.tasks_per_step=1",
]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You may be attemping to run a task that uses custom")
def test_protege_run_records_every_step_registers_and_traces_back(
    mlflow_server, tmp_path: Path, monkeypatch, capsys
) -> None:
    from kfp.local.config import LocalExecutionConfig

    from protege.register import TAG_EVAL_REPORT, chain
    from protege.tracking import TAG_CHECKPOINT_URI, Tracker

    store = mlflow_server.store_config()
    for key, value in mlflow_server.env().items():
        monkeypatch.setenv(key, value)  # the steps are subprocesses: they read endpoints and keys from env
    monkeypatch.setenv("PROTEGE_S3_ENDPOINT", store.endpoint)
    monkeypatch.setattr(LocalExecutionConfig, "instance", None)  # undo local.init after the test
    tag = uuid.uuid4().hex[:8]
    overrides = [
        f"services.data_dir={tmp_path / 'data'}",
        f"tasks.repos_dir={tmp_path / 'repos'}",
        f"store.bucket=run-{tag}",
        f"tracking.experiment=run-{tag}",
        f"tracking.registered_model=agent-{tag}",
        *SMALL,
    ]
    assert main(["run", "--profile", "local", "--run-name", f"r-{tag}", *overrides]) == 0
    out = capsys.readouterr().out
    for step in ("verify", "synth", "sft", "rl1", "rl2", "eval", "register"):
        assert any(line.startswith(f"{step} ") and " SUCCESS " in line for line in out.splitlines()), step
    assert "kept 2/2 trajectories" in out and "Pass@1 " in out
    # The tiny model resolves nothing: registered, never champion, and the summary says why (issue 15).
    assert f"agent-{tag} v1, no alias (Pass@1 0.0000 resolves no eval instance" in out
    assert f"protege lineage --profile local agent-{tag}/1" in out

    cfg = load_config("local", overrides=overrides)
    tracker = Tracker(cfg.tracking)
    version = tracker.client.get_model_version(f"agent-{tag}", 1)
    assert version.aliases == []
    parent = tracker.get_run(version.tags["protege.pipeline_run_id"])
    assert parent.info.run_name == f"r-{tag}" and parent.info.status == "FINISHED"
    phases = [run.info.run_name for run in tracker.nested_runs(parent.info.run_id)]
    assert sorted(phases) == sorted(["synth", "sft", "rl1", "rl2", "eval", "register"])
    assert all(run.info.status == "FINISHED" for run in tracker.nested_runs(parent.info.run_id))
    # rl1 then rl2 from the SFT checkpoint: per-step figures, and rl2 starts from rl1's last checkpoint.
    rl_runs = {
        r.info.run_name: r
        for r in tracker.nested_runs(parent.info.run_id)
        if r.info.run_name in ("rl1", "rl2")
    }
    for name, steps in (("rl1", [1]), ("rl2", [2])):
        for key in (
            "reward/r_total",
            "reward/r_loop",
            "reward/r_expert",
            "reward/r_follow",
            "reward/r_correct",
            "rollout/expert_calls_per_traj",
            "rollout/steps_per_traj",
            "rollout/loop_rate_gt10",
        ):
            history = tracker.client.get_metric_history(rl_runs[name].info.run_id, key)
            assert [m.step for m in history] == steps, (name, key)
    assert rl_runs["rl1"].data.tags["protege.reference_model"].startswith(f"s3://run-{tag}/r-{tag}/sft/model")
    rl1_last = tracker.logged_models(rl_runs["rl1"].info.run_id)
    rl2_first = min(tracker.logged_models(rl_runs["rl2"].info.run_id), key=lambda m: int(m.params["step"]))
    assert (
        rl2_first.tags["protege.parent_checkpoint"] == f"s3://run-{tag}/r-{tag}/rl1/checkpoints/checkpoint-1"
    )
    assert rl2_first.tags["protege.parent_checkpoint"] in {m.tags[TAG_CHECKPOINT_URI] for m in rl1_last}

    tags = version.tags
    assert tags["protege.kfp_run_id"] == parent.data.tags[kfp_steps.TAG_KFP_RUN] != ""
    synth = next(r for r in tracker.nested_runs(parent.info.run_id) if r.info.run_name == "synth")
    assert json.loads(tags["protege.dataset_digests"])["synth"] == synth.data.tags["protege.dataset_sha256"]
    assert tags[TAG_EVAL_REPORT].startswith(f"s3://run-{tag}/r-{tag}/eval")
    assert tags["protege.base_model"] == "tiny" and len(tags["protege.reward_config_hash"]) == 64
    assert tags["protege.checkpoint_uri"].startswith(f"s3://run-{tag}/r-{tag}/rl2")

    lines = "\n".join(chain(tracker, f"agent-{tag}/1"))
    assert f"model agent-{tag} v{version.version}" in lines
    assert f"pipeline run r-{tag} {parent.info.run_id}" in lines
    for phase in ("synth", "sft", "rl1", "rl2", "eval", "register"):
        assert f"  phase {phase} " in lines, phase
    assert f"protege.kfp_run_id = {tags['protege.kfp_run_id']}" in lines
    assert "dataset " in lines and "checkpoint " in lines
    assert f"    protege.parent_checkpoint = s3://run-{tag}/r-{tag}/rl1/checkpoints/checkpoint-1" in lines

    # What a reviewer sees: the parent run's own figures, datasets and model links, eval's traces, rl2's
    # model as the registered version's source, and the KFP artifacts at their s3:// objects.
    assert {
        "pass_at_1",
        "pass_at_1_ci_low",
        "pass_at_1_ci_high",
        "expert_calls_per_task",
        "expert_token_share",
        "median_total_cost_per_task",
        "loop_rate_gt_10",
    } <= set(parent.data.metrics)
    assert {d.dataset.name for d in parent.inputs.dataset_inputs} == {
        "train-tasks",
        "eval-tasks",
        "sft-dataset",
    }
    rl2_model = parent.data.tags["protege.model.rl2.model_id"]
    assert version.source == f"models:/{rl2_model}" and version.run_id == rl_runs["rl2"].info.run_id
    eval_run = next(r for r in tracker.nested_runs(parent.info.run_id) if r.info.run_name == "eval")
    traces = tracker.client.search_traces(locations=[tracker.experiment_id], run_id=eval_run.info.run_id)
    assert len(traces) == 1 and traces[0].info.tags["protege.instance_id"] == "protege-demo__minitemplate-1"
    (rl2_output,) = (tmp_path / "data" / kfp_local.PIPELINE_ROOT).glob("*/rl2/executor_output.json")
    (model,) = json.loads(rl2_output.read_text())["artifacts"]["model"]["artifacts"]
    assert model["uri"] == f"s3://run-{tag}/r-{tag}/rl2/model"
    assert model["metadata"]["mlflow_model_id"] == rl2_model


def test_local_runs_clear_retries_only_while_they_run() -> None:
    from protege.pipeline.compile import load_pipeline

    pipeline = load_pipeline("local_pipeline")  # what kfp.local runs (no exit handler)
    tasks = pipeline.pipeline_spec.root.dag.tasks
    before = {name for name, task in tasks.items() if task.HasField("retry_policy")}
    assert before == {"verify-tasks", "synth", "rl1", "rl2", "eval"}
    with kfp_local.without_retries(pipeline):
        assert not any(task.HasField("retry_policy") for task in tasks.values())
    assert {name for name, task in tasks.items() if task.HasField("retry_policy")} == before
    assert tasks["rl1"].retry_policy.max_retry_count == 2  # restored whole, not just flagged
