"""The baselines branch's steps against the real local s3rver and MLflow: a standard variant measured and
uploaded, then one comparison of this run's model with the baselines and, once there is one, the champion
(issue 19)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from protege import evaluate
from protege.compare import steps
from protege.compare.spec import SpecError
from protege.pipeline import steps as kfp_steps
from protege.register import run as register_run
from protege.services import LocalServices
from protege.tasksets import load_task_set, task_set_digest
from protege.tracking import TAG_VARIANT, Tracker
from tests.test_register import lineage

EVAL_ID = "protege-demo__prioq-1"


@pytest.mark.slow  # two evals and two comparisons against real services: about 40 s on 2 idle cores
def test_baseline_then_compare_with_the_champion_row_once_there_is_one(
    store, mlflow_server: LocalServices, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from protege.demo import build_demo_repos

    repos = tmp_path / "repos"
    (task,) = [t for t in load_task_set("demo:eval") if t.instance_id == EVAL_ID]
    build_demo_repos(repos, only=[task.repo])
    monkeypatch.delenv("PROTEGE_PARENT_RUN_ID", raising=False)
    suffix = uuid.uuid4().hex[:8]
    base = [
        f"store.bucket={store._cfg.bucket}",
        f"store.endpoint={store._cfg.endpoint}",
        f"store.access_key={store._cfg.access_key.get_secret_value()}",
        f"store.secret_key={store._cfg.secret_key.get_secret_value()}",
        f"services.data_dir={tmp_path / 'data'}",
        f"tasks.repos_dir={repos}",
        f"tasks.eval_ids=[{EVAL_ID}]",
        f"tracking.uri={mlflow_server.mlflow_url}",
        f"tracking.experiment=steps-{suffix}",
        f"tracking.registered_model=agent-{suffix}",
        f"expert.cache_dir={tmp_path / 'cache'}",
        f"eval.grade_logs_dir={tmp_path / 'grading'}",
        "run_name=retrain",
    ]

    def config_for(extra: list[str]):
        return kfp_steps.step_config("local", json.dumps(base + extra))

    cfg = config_for([])
    # This run's model: the gold replay stands in for rl2 (its results in the store, as the eval step leaves them).
    model_out = tmp_path / "eval"
    gold = config_for(["agent.policy.backend=scripted"])
    evaluate.run(gold, "script:gold", model_out, script="gold", progress=lambda line: None)
    model_uri = store.uri("retrain/eval")
    store.upload_dir(model_out, model_uri)

    with pytest.raises(SpecError, match="unknown variant 'sft' .*standard set: .*expert-alone"):
        steps.baseline_step(config_for, "sft", {"base": "tiny"}, store)
    alone = steps.baseline_step(config_for, "expert-alone", {"base": "tiny"}, store)
    assert alone == store.uri("retrain/baselines/expert-alone") and store.exists(alone)

    table = steps.compare_step(config_for, model_uri, [alone], store, Tracker(cfg.tracking))
    text = store.fetch(table, tmp_path / "t1").read_text()
    assert (
        "| full | 1.000 (1/1)" in text and "| expert-alone | 1.000 (1/1)" in text and "| champion" not in text
    )

    # Register this model as champion on the same eval set; the next comparison has a champion row.
    digest = task_set_digest([task])
    tracker = Tracker(cfg.tracking)
    tracker.start_pipeline("pipe")
    report = {"summary": {"pass_at_1": 1.0}, "uri": model_uri}
    assert register_run(
        cfg, model_uri="s3://x/rl2", eval_report=report, lineage=lineage(digest), tracker=tracker
    )["promoted"]
    tracker.end_pipeline()
    table = steps.compare_step(config_for, model_uri, [alone], store, Tracker(cfg.tracking))
    text = store.fetch(table, tmp_path / "t2").read_text()
    assert "| champion | 1.000 (1/1) | [0.207, 1.000] | +0.000 | [0.000, 0.000] | 1 (b=0, c=0)" in text
    variants = {
        r.data.tags.get(TAG_VARIANT)
        for r in Tracker(cfg.tracking).runs_tagged("protege.eval_set_digest", digest)
    }
    assert {"full", "champion", "expert-alone"} <= variants
