"""`protege compare` end to end on the demo eval split (real sandboxes, real grading, the real local MLflow
server), and the register gate against a named baseline measured by a comparison (issue 19)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml

from protege.cli import main
from protege.compare import log_comparison
from protege.config import TrackingConfig, load_config
from protege.register import baseline_pass_at_1, decide, run
from protege.services import LocalServices
from protege.tracking import TAG_VARIANT, Tracker
from tests.rl_helpers import build_tiny
from tests.test_register import lineage, report

EVAL_IDS = ["protege-demo__prioq-1", "protege-demo__unitconv-1"]
EXCLUDED = "protege-demo__unitconv-1"


@pytest.mark.slow  # six variants through the eval phase: about a minute on 2 idle cores
def test_compare_writes_every_variant_row_paired_test_and_cost_ratio_and_logs_one_run(
    mlflow_server: LocalServices, tmp_path: Path
) -> None:
    from protege.demo import build_demo_repos

    repos = tmp_path / "repos"
    build_demo_repos(repos)
    tiny = build_tiny(tmp_path / "tiny", tmp_path / "corpus")
    scripted = ["agent.policy.backend=scripted"]
    variants = {
        "reference": "gold",
        "variants": [
            {"name": "gold", "model": "script:gold", "script": "gold", "overrides": scripted},
            {"name": "empty", "model": "script:empty", "script": "empty", "overrides": scripted},
            {
                "name": "gold-forced-k1",
                "model": "script:gold",
                "script": "gold",
                "overrides": [
                    *scripted,
                    "agent.forced_ask.mode=interval",
                    "agent.forced_ask.every_k_steps=1",
                ],
            },
            {
                "name": "gold-random-p1",
                "model": "script:gold",
                "script": "gold",
                "overrides": [*scripted, "agent.forced_ask.mode=random", "agent.forced_ask.rate=1.0"],
            },
            {
                "name": "tiny-no-ask",
                "model": str(tiny),
                "overrides": [
                    "agent.ask_expert=false",
                    "agent.policy.max_new_tokens=8",
                    "agent.max_format_errors=1",
                ],
            },
            {
                "name": "expert-alone",
                "model": "expert:oracle",
                "overrides": ["agent.policy.backend=oracle", "agent.ask_expert=false"],
            },
        ],
    }
    (tmp_path / "variants.yaml").write_text(yaml.safe_dump(variants))
    (tmp_path / "excluded.yaml").write_text(f"{EXCLUDED}: example reason, its test rejects a correct fix\n")
    experiment = f"compare-{uuid.uuid4().hex[:8]}"
    code = main(
        [
            "compare",
            "--variants",
            str(tmp_path / "variants.yaml"),
            "--exclusions",
            str(tmp_path / "excluded.yaml"),
            "--out",
            str(tmp_path / "out"),
            "--run-name",
            "cmp-test",
            "--no-upload",
            f"tasks.repos_dir={repos}",
            f"tasks.eval_ids={json.dumps(EVAL_IDS)}",
            f"tracking.uri={mlflow_server.mlflow_url}",
            f"tracking.experiment={experiment}",
            f"expert.cache_dir={tmp_path / 'cache'}",
            f"eval.grade_logs_dir={tmp_path / 'grading'}",
            f"model.cache_dir={tmp_path / 'models'}",
        ]
    )
    assert code == 0
    result = json.loads((tmp_path / "out" / "compare.json").read_text())
    rows = {row["variant"]: row for row in result["tables"]["all"]}
    assert list(rows) == [v["name"] for v in variants["variants"]]
    assert (rows["gold"]["pass_at_1"], rows["empty"]["pass_at_1"], rows["tiny-no-ask"]["pass_at_1"]) == (
        1.0,
        0.0,
        0.0,
    )
    # Paired against gold on the 2 instances: empty loses both (b=0, c=2), exact p = 2 * 1/4.
    assert (rows["empty"]["only_variant"], rows["empty"]["only_reference"]) == (0, 2)
    assert rows["empty"]["mcnemar_p"] == pytest.approx(0.5)
    assert rows["empty"]["difference"] == -1.0
    # The gold script takes 2 steps: forced before each (k=1, and rate 1.0) -> 2 forced calls per task.
    assert (
        rows["gold-forced-k1"]["forced_calls_per_task"]
        == rows["gold-random-p1"]["forced_calls_per_task"]
        == 2.0
    )
    assert rows["tiny-no-ask"]["expert_calls_per_task"] == 0.0
    # Costs: the oracle expert's metered tokens at list prices; the expert alone costs more than gold + 2 calls.
    assert rows["expert-alone"]["cost_ratio"] == 1.0
    assert rows["gold-forced-k1"]["cost_ratio"] > 1.0
    assert rows["gold"]["cost_ratio"] is None  # costs nothing: no ratio
    without = {row["variant"]: row for row in result["tables"]["without_exclusions"]}
    assert without["empty"]["paired_instances"] == 1 and without["gold"]["tasks"] == 1
    markdown = (tmp_path / "out" / "compare.md").read_text()
    assert f"`{EXCLUDED}`: example reason" in markdown and result["task_set"]["digest"] in markdown
    # MLflow: one comparison run, its children the variants, each with its row.
    tracker = Tracker(TrackingConfig(uri=mlflow_server.mlflow_url, experiment=experiment))
    (parent,) = [
        r for r in tracker.client.search_runs([tracker.experiment_id]) if r.info.run_name == "cmp-test"
    ]
    children = tracker.nested_runs(parent.info.run_id)
    assert sorted(r.data.tags[TAG_VARIANT] for r in children) == sorted(rows)
    empty = next(r for r in children if r.info.run_name == "empty")
    assert empty.data.metrics["mcnemar_p"] == pytest.approx(0.5)
    assert empty.data.metrics["without_exclusions.paired_instances"] == 1.0
    artifacts = [a.path for a in tracker.client.list_artifacts(parent.info.run_id, "comparison")]
    assert {"comparison/compare.md", "comparison/compare.html", "comparison/plots"} <= set(artifacts)


def comparison_report(digest: str, scores: dict[str, float]) -> dict:
    rows = [
        {"variant": name, "pass_at_1": score, "loop_rates": {"10": 0.0}, "tasks": 4}
        for name, score in scores.items()
    ]
    return {
        "task_set": {"source": "demo:eval", "digest": digest, "instances": 4},
        "exclusions": [],
        "reference": "sft",
        "variants": [{"name": n, "model": n, "overrides": [], "results": "/nonexistent"} for n in scores],
        "tables": {"all": rows},
    }


def test_register_gate_refuses_a_model_that_does_not_beat_the_named_baseline(
    mlflow_server: LocalServices, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    tracking = mlflow_server.tracking_config(
        TrackingConfig(experiment=f"gate-{suffix}", registered_model=f"agent-{suffix}")
    )
    cfg = load_config("local").model_copy(update={"tracking": tracking})
    digest = "sha256:evalset-a"
    (tmp_path / "compare.json").write_text("{}")
    (tmp_path / "plots").mkdir()
    paths = {k: tmp_path / "compare.json" for k in ("json", "md", "html")}
    # An older measurement of sft (0.9), then the latest (0.5); and one on another eval set (0.1).
    for scores, eval_set in (
        ({"sft": 0.9}, digest),
        ({"sft": 0.5, "base": 0.25}, digest),
        ({"sft": 0.1}, "other"),
    ):
        log_comparison(
            Tracker(cfg.tracking), cfg, comparison_report(eval_set, scores), paths, tmp_path, "cmp"
        )
    tracker = Tracker(cfg.tracking)
    assert baseline_pass_at_1(tracker, "sft", digest) == 0.5
    assert baseline_pass_at_1(tracker, "sft", "never") is None

    def register(score: float, baseline: str) -> dict:
        gated = cfg.model_copy(
            update={"register": cfg.register.model_copy(update={"beat_baseline": baseline})}
        )
        tracker = Tracker(gated.tracking)
        tracker.start_pipeline(f"pipe-{score}-{baseline}")
        out = run(
            gated,
            model_uri=f"s3://protege/r/{score}/rl2",
            eval_report=report(score),
            lineage=lineage(digest),
            tracker=tracker,
        )
        tracker.end_pipeline()
        return out

    refused = register(0.5, "sft")  # equal is not beating
    assert (
        not refused["promoted"] and refused["reason"] == "Pass@1 0.5000 does not beat baseline 'sft' (0.5000)"
    )
    never = register(0.75, "rl9")
    assert not never["promoted"] and "baseline 'rl9' was never measured on this eval set" in never["reason"]
    promoted = register(0.75, "sft")
    assert promoted["promoted"] and "beats baseline 'sft' (0.5000)" in promoted["reason"]
    version = tracker.client.get_model_version(tracking.registered_model, str(refused["version"]))
    assert version.tags["protege.promotion"].startswith("refused: Pass@1 0.5000 does not beat baseline 'sft'")


def test_decide_with_a_baseline_is_pure() -> None:
    assert not decide(0.3, None, None, False, True, ("base", 0.3)).promote
    assert decide(0.31, None, None, False, True, ("base", 0.3)).promote
    assert not decide(0.9, None, None, False, True, ("base", None)).promote
    assert decide(0.9, None, None, False, True).promote  # no baseline asked: as before
