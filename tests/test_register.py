"""Phase register: the champion gate (table-driven) and registration against a real MLflow server;
`protege lineage` reads the registered versions back."""

from __future__ import annotations

import uuid

import pytest

from protege.cli import main
from protege.config import TrackingConfig, load_config
from protege.register import (
    CHAMPION,
    TAG_PROMOTION,
    LineageError,
    RegisterError,
    chain,
    current_champion,
    decide,
    eval_figures,
    lineage_tags,
    parse_ref,
    run,
)
from protege.services import LocalServices
from protege.tracking import Tracker

GATE_CASES = [
    # pass@1, floor, champion, same set, require, promote, reason fragment
    (0.30, 0.10, 0.20, True, True, True, "champion's 0.2000"),
    (0.20, 0.10, 0.20, True, True, True, ">= champion's"),
    (0.05, 0.10, None, True, True, False, "below the floor"),
    (0.05, 0.10, 0.01, True, True, False, "below the floor"),
    (0.15, 0.10, 0.20, True, True, False, "below the champion's 0.2000"),
    (0.15, 0.10, 0.20, True, False, True, "champion's 0.2000"),
    (0.10, 0.10, None, False, True, True, "no champion yet"),
    (0.15, 0.10, 0.90, False, True, True, "another eval set"),
    # A run that resolves nothing is never champion, whatever the floor says.
    (0.0, None, None, True, True, False, "resolves no eval instance"),
    (0.0, 0.0, None, True, True, False, "resolves no eval instance"),
    # No configured floor: the baseline is the champion's Pass@1 on the same eval set.
    (0.25, None, None, True, True, True, "no champion yet; Pass@1 0.2500 resolves at least one"),
    (0.15, None, 0.20, True, False, False, "below the champion's 0.2000"),
    (0.20, None, 0.20, True, False, True, ">= champion's 0.2000"),
    (0.05, None, 0.20, False, True, True, "another eval set; Pass@1 0.0500 resolves at least one"),
]


@pytest.mark.parametrize(("score", "floor", "champion", "same", "require", "promote", "reason"), GATE_CASES)
def test_gate(score, floor, champion, same, require, promote, reason):
    decision = decide(score, floor, champion, same, require)
    assert decision.promote is promote
    assert reason in decision.reason


def lineage(eval_set: str = "sha256:evalset-a") -> dict[str, object]:
    return {
        "kfp_run_id": "kfp-run-42",
        "pipeline_version": "pv-7",
        "git_commit": "0123abcd",
        "image_digests": {"trainer": "sha256:aa", "agent": "sha256:bb"},
        "base_model": "Qwen/Qwen3-8B",
        "dataset_digests": {"train": "d1", "synth": "d2"},
        "expert_model": "anthropic:claude-sonnet-4-5",
        "reward_config_hash": "rh-9",
        "eval_set_digest": eval_set,
    }


def report(score: float) -> dict[str, object]:
    return {"summary": {"pass_at_1": score}, "uri": f"s3://protege/runs/r/eval-{score}"}


def test_bad_inputs_are_named():
    with pytest.raises(RegisterError, match="lacks base_model"):
        lineage_tags({k: v for k, v in lineage().items() if k != "base_model"})
    with pytest.raises(RegisterError, match="unknown lineage key.*colour"):
        lineage_tags({**lineage(), "colour": "red"})
    with pytest.raises(RegisterError, match="pass_at_1"):
        eval_figures({"summary": {}, "uri": "s3://x"})
    assert (
        lineage_tags(lineage())["protege.image_digests"] == '{"agent": "sha256:bb", "trainer": "sha256:aa"}'
    )


def test_parse_ref():
    assert parse_ref("agent@best") == ("agent", "best", None)
    assert parse_ref("agent/3") == ("agent", None, 3)
    assert parse_ref("agent") == ("agent", CHAMPION, None)
    with pytest.raises(LineageError, match="'agent@x/3'"):
        parse_ref("agent@x/3")


@pytest.fixture(scope="module")
def registered(mlflow_server: LocalServices) -> tuple[Tracker, list[dict[str, object]]]:
    """Four registrations on a fresh model: v1 first, v2 worse, v3 better, v4 on another eval set."""
    suffix = uuid.uuid4().hex[:8]
    tracking = mlflow_server.tracking_config(
        TrackingConfig(experiment=f"reg-{suffix}", registered_model=f"agent-{suffix}")
    )
    cfg = load_config("local").model_copy(update={"tracking": tracking})
    cfg = cfg.model_copy(update={"register": cfg.register.model_copy(update={"pass_at_1_floor": 0.1})})
    results = []
    for i, (score, eval_set) in enumerate([(0.3, "a"), (0.2, "a"), (0.4, "a"), (0.15, "b")]):
        tracker = Tracker(cfg.tracking)
        parent = tracker.start_pipeline(f"pipe-{i}", tags={"protege.kfp_run_id": f"kfp-{i}"})
        with tracker.phase("synth") as synth:
            tracker.log_dataset(
                synth.run_id,
                "demo-train",
                "s3://protege/tasks/demo-train",
                digest=f"tasks{i}",
                context="tasks",
            )
            tracker.log_dataset(
                synth.run_id, "trajectories", "s3://protege/runs/r/synth/traj.jsonl", digest=f"traj{i}"
            )
        with tracker.phase("sft") as sft:
            tracker.log_checkpoint(sft.run_id, "sft", f"s3://protege/runs/r{i}/sft/checkpoint")
        out = run(
            cfg,
            model_uri=f"s3://protege/runs/r{i}/rl2/checkpoint",
            eval_report=report(score),
            lineage=lineage(eval_set),
            tracker=tracker,
        )
        tracker.end_pipeline()
        results.append({**out, "parent": parent})
    return tracker, results


def test_a_first_run_that_resolves_nothing_is_registered_but_never_champion(mlflow_server):
    suffix = uuid.uuid4().hex[:8]
    tracking = mlflow_server.tracking_config(
        TrackingConfig(experiment=f"zero-{suffix}", registered_model=f"agent-{suffix}")
    )
    cfg = load_config("local").model_copy(update={"tracking": tracking})  # default floor: the baseline
    assert cfg.register.pass_at_1_floor is None
    tracker = Tracker(cfg.tracking)
    tracker.start_pipeline("zero")
    out = run(
        cfg,
        model_uri="s3://protege/runs/z/rl2/checkpoint",
        eval_report=report(0.0),
        lineage=lineage(),
        tracker=tracker,
    )
    tracker.end_pipeline()
    assert (out["version"], out["promoted"], out["champion_version"]) == (1, False, None)
    assert current_champion(tracker, out["name"]) is None
    version = tracker.client.get_model_version(out["name"], 1)
    assert version.tags[TAG_PROMOTION] == (
        "refused: Pass@1 0.0000 resolves no eval instance: a run that resolves nothing is never champion"
    )


def test_champion_follows_the_gate(registered):
    tracker, results = registered
    assert [(r["version"], r["promoted"]) for r in results] == [(1, True), (2, False), (3, True), (4, True)]
    assert results[1]["champion_version"] == 1 and results[3]["champion_version"] == 3
    name = results[0]["name"]
    assert tracker.model_version(CHAMPION, name).version == "4"
    refused = tracker.client.get_model_version(name, 2)
    assert refused.aliases == []
    assert refused.tags[TAG_PROMOTION] == "refused: Pass@1 0.2000 is below the champion's 0.3000"
    v3 = tracker.client.get_model_version(name, 3)
    assert v3.tags[TAG_PROMOTION].startswith("promoted: ") and v3.tags["protege.pass_at_1"] == "0.4"
    assert v3.tags["protege.checkpoint_uri"] == "s3://protege/runs/r2/rl2/checkpoint"
    assert v3.tags["protege.pipeline_run_id"] == results[2]["parent"]
    assert v3.tags["protege.eval_report_uri"] == "s3://protege/runs/r/eval-0.4"
    assert v3.tags["protege.base_model"] == "Qwen/Qwen3-8B" and v3.tags["protege.kfp_run_id"] == "kfp-run-42"


def test_lineage_prints_the_chain(registered, capsys):
    tracker, results = registered
    name = results[1]["name"]
    lines = "\n".join(chain(tracker, f"{name}/2"))
    for expected in (
        f"model {name} v2 (aliases: -)",
        "protege.promotion = refused: Pass@1 0.2000",
        "protege.git_commit = 0123abcd",
        "protege.expert_model = anthropic:claude-sonnet-4-5",
        'protege.dataset_digests = {"synth": "d2", "train": "d1"}',
        "uri = s3://protege/runs/r1/rl2/checkpoint",
        f"pipeline run pipe-1 {results[1]['parent']} (FINISHED)",
        "protege.kfp_run_id = kfp-1",
        "dataset demo-train [tasks] digest=tasks1",
        "dataset trajectories [training] digest=traj1",
        "checkpoint sft",
        "uri=s3://protege/runs/r1/sft/checkpoint",
        "phase register",
    ):
        assert expected in lines, f"missing {expected!r} in:\n{lines}"
    # The CLI resolves NAME to the champion (v4 here).
    overrides = [f"tracking.uri={tracker.cfg.uri}", f"tracking.experiment={tracker.cfg.experiment}"]
    assert main(["lineage", name, *overrides]) == 0
    printed = capsys.readouterr().out
    assert (
        printed.startswith(f"model {name} v4 (aliases: champion)")
        and "protege.eval_set_digest = b" in printed
    )
