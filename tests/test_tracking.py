"""Tracking against a real MLflow server (artifacts proxied to a real s3rver): runs, lineage, registry."""

from __future__ import annotations

import uuid

import pandas as pd
import pytest

from protege.config import TrackingConfig, flatten, load_config, public_dict
from protege.services import LocalServices, free_port
from protege.tracking import PARENT_RUN_ENV, TAG_CHECKPOINT_URI, Tracker, TrackingError


@pytest.fixture
def tracker(mlflow_server: LocalServices) -> Tracker:
    """A Tracker on its own experiment and registered model name."""
    suffix = uuid.uuid4().hex[:8]
    base = TrackingConfig(experiment=f"exp-{suffix}", registered_model=f"agent-{suffix}")
    return Tracker(mlflow_server.tracking_config(base))


def test_pipeline_run_with_nested_phase_dataset_and_external_model(tracker: Tracker):
    cfg = load_config("local")
    parent = tracker.start_pipeline("demo-run", config=cfg, tags={"git_sha": "abc123"})

    with tracker.phase("sft", params={"lr": 1e-3}) as sft:
        tracker.log_metrics(sft.run_id, {"loss": 2.5}, step=1)
        tracker.log_metrics(sft.run_id, {"loss": 1.5}, step=2)
        df = pd.DataFrame({"instance_id": ["a", "b"], "resolved": [1.0, 0.0]})
        digest = tracker.log_dataset(
            sft.run_id,
            "sft-trajectories",
            "s3://protege/runs/r1/synth/trajectories.jsonl",
            df=df,
            tags={"split": "train"},
        )
        meta_digest = tracker.log_dataset(
            sft.run_id, "demo-train", "s3://protege/tasks/demo-train", digest="feedc0de", context="tasks"
        )
        model_id = tracker.log_checkpoint(
            sft.run_id,
            "sft",
            "s3://protege/runs/r1/sft/checkpoint",
            params={"steps": 3},
            tags={"phase": "sft"},
        )

    # Parent: config params (flattened, masked), digest tag, config.json artifact.
    run = tracker.get_run(parent)
    expected = flatten(public_dict(cfg))
    assert run.data.params["rl.group_size"] == str(expected["rl.group_size"])
    assert run.data.params["store.secret_key"] == "**********"
    assert len(run.data.params) == len(expected)
    assert run.data.tags["protege.config_digest"] == cfg.digest() and run.data.tags["git_sha"] == "abc123"
    assert [a.path for a in tracker.client.list_artifacts(parent)] == ["config.json"]

    # Nested run named after the phase, finished, with its metric history.
    (nested,) = tracker.nested_runs(parent)
    assert (nested.info.run_name, nested.info.status, nested.info.run_id) == ("sft", "FINISHED", sft.run_id)
    assert nested.data.params["lr"] == "0.001"
    history = tracker.client.get_metric_history(sft.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.5), (2, 1.5)]

    # Dataset inputs with digests.
    inputs = {d.dataset.name: d for d in tracker.dataset_inputs(sft.run_id)}
    assert inputs["sft-trajectories"].dataset.digest == digest
    assert inputs["sft-trajectories"].dataset.source_type == "s3"
    assert {t.key: t.value for t in inputs["sft-trajectories"].tags}["split"] == "train"
    assert inputs["demo-train"].dataset.digest == meta_digest == "feedc0de"
    assert "tasks/demo-train" in inputs["demo-train"].dataset.source

    # External LoggedModel pointing at the checkpoint's S3 URI.
    (model,) = tracker.logged_models(sft.run_id)
    assert model.model_id == model_id and model.name == "sft"
    assert model.tags[TAG_CHECKPOINT_URI] == "s3://protege/runs/r1/sft/checkpoint"
    assert model.tags["mlflow.model.isExternal"] == "true"
    assert str(model.status) in ("READY", "LoggedModelStatus.READY")
    assert model.params["steps"] == "3"


def test_registered_version_has_lineage_tags_and_alias(tracker: Tracker):
    parent = tracker.start_pipeline("reg-run")
    with tracker.phase("rl2") as rl2:
        model_id = tracker.log_checkpoint(rl2.run_id, "rl2", "s3://protege/runs/r2/rl2/checkpoint")
    with tracker.phase("register"):
        version = tracker.register(model_id, tags={"eval.resolved_rate": "0.25"}, aliases=["candidate"])

    assert version.version == "1"
    found = tracker.model_version("candidate")
    assert found.version == version.version and "candidate" in found.aliases
    assert found.tags["protege.model_id"] == model_id
    assert found.tags["protege.checkpoint_uri"] == "s3://protege/runs/r2/rl2/checkpoint"
    assert found.tags["protege.source_run_id"] == rl2.run_id
    assert found.tags["protege.pipeline_run_id"] == parent
    assert found.tags["eval.resolved_rate"] == "0.25"
    assert [r.info.run_name for r in tracker.nested_runs()] == ["rl2", "register"]


def test_phase_in_another_process_reattaches_to_parent(tracker: Tracker, monkeypatch):
    parent = tracker.start_pipeline("kfp-run")
    env = tracker.parent_env()
    assert env == {PARENT_RUN_ENV: parent}

    # A KFP step is a new process: a fresh Tracker that only sees the env var.
    monkeypatch.setenv(PARENT_RUN_ENV, env[PARENT_RUN_ENV])
    step = Tracker(tracker.cfg)
    assert step.start_pipeline("ignored-name") == parent
    with pytest.raises(RuntimeError, match="boom"), step.phase("eval"):
        raise RuntimeError("boom")
    (failed,) = tracker.nested_runs(parent)
    assert (failed.info.run_name, failed.info.status) == ("eval", "FAILED")
    step.end_pipeline()
    assert tracker.get_run(parent).info.status == "FINISHED"


def test_ensure_pipeline_opens_a_run_only_when_the_tracker_has_none(tracker: Tracker, monkeypatch):
    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
    first = tracker.ensure_pipeline("alone")
    assert tracker.get_run(first).info.run_name == "alone"
    assert tracker.ensure_pipeline("again") == first  # already in one: no second run
    assert [r.info.run_name for r in tracker.client.search_runs([tracker.experiment_id])] == ["alone"]


def test_long_params_are_truncated_and_batched(tracker: Tracker):
    run_id = tracker.start_pipeline("params-run")
    params = {f"p{i:03d}": i for i in range(250)} | {"long": "x" * 2000}
    tracker.log_params(run_id, params)
    logged = tracker.get_run(run_id).data.params
    assert len(logged) == 251 and logged["p249"] == "249"
    assert len(logged["long"]) == tracker.cfg.param_value_max_chars and logged["long"].endswith("[truncated]")


def test_misuse_and_unreachable_server_are_clear_errors(tracker: Tracker):
    with pytest.raises(TrackingError, match="call start_pipeline"):
        tracker.parent_env()
    tracker.start_pipeline("x")
    with pytest.raises(TrackingError, match="unknown phase 'train'"), tracker.phase("train"):
        pass
    with pytest.raises(TrackingError, match="give a digest or a DataFrame"):
        tracker.log_dataset(tracker.parent_run_id, "d", "s3://b/d")

    dead = TrackingConfig(uri=f"http://127.0.0.1:{free_port()}", request_max_retries=0, request_timeout_s=2)
    with pytest.raises(TrackingError, match=rf"{dead.uri}: experiment 'protege'"):
        Tracker(dead)
