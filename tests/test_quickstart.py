"""`protege demo` end to end against real s3rver + MLflow: every built phase runs and is tracked."""

import pytest

from protege import quickstart
from protege.config import load_config


@pytest.mark.slow
def test_demo_runs_every_built_phase_and_tracks_them(tmp_path, mlflow_server, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = mlflow_server.store_config()
    cfg = load_config(
        "local",
        overrides=[
            f"store.endpoint={store.endpoint}",
            f"store.access_key={store.access_key.get_secret_value()}",
            f"store.secret_key={store.secret_key.get_secret_value()}",
            "store.bucket=demo-test",
            f"tracking.uri={mlflow_server.mlflow_url}",
            "tracking.experiment=demo-test",
            f"tasks.repos_dir={tmp_path / 'repos'}",
            "sft.max_steps=2",
            "agent.policy.max_new_tokens=32",
            "agent.max_format_errors=1",
        ],
    )
    steps = {s.name: s for s in quickstart.run(cfg, tmp_path / "demo")}
    assert [steps[n].status for n in ("verify", "synth", "sft", "eval")] == ["ok"] * 4
    assert "12 tasks" in steps["verify"].figures
    assert "kept 8/8" in steps["synth"].figures
    assert "Pass@1" in steps["eval"].figures

    from protege.tracking import Tracker

    tracker = Tracker(cfg.tracking)
    runs = tracker.client.search_runs(
        [tracker.client.get_experiment_by_name("demo-test").experiment_id],
        filter_string="attributes.run_name = 'protege'",
    )
    (parent,) = runs
    assert parent.info.status == "FINISHED"
    nested = {r.info.run_name for r in tracker.nested_runs(parent.info.run_id)}
    assert {"synth", "sft", "eval"} <= nested
