"""The summary `protege run` prints: table rows from the task clock and the steps' facts, closing lines."""

from __future__ import annotations

from protege.config import load_config
from protege.pipeline.summary import TASKS, Facts, render, summarize

CFG = load_config("local")


def _clock(statuses: dict[str, str]):
    def step(task: str) -> tuple[str, float | None]:
        status = statuses.get(task, "not run")
        return status, (2.5 if status in ("SUCCESS", "FAILURE") else None)

    return step


def _facts(promoted: bool = True) -> dict[str, Facts]:
    return {
        "verify-tasks": Facts(
            outputs={"report_uri": "s3://b/r/verify/verify.json"}, extra={"train": 8, "eval": 4}
        ),
        "synth": Facts(
            outputs={"dataset_digest": "ab" * 32},
            metrics={"kept": 8.0, "episodes": 8.0, "expert_calls_per_trajectory": 1.0},
        ),
        "sft": Facts(
            outputs={"model_uri": "s3://b/r/sft/model"}, metrics={"loss": 1.25}, first={"loss": 4.5}
        ),
        "rl1": Facts(
            outputs={"Output": "s3://b/r/rl1/model"},
            metrics={"reward/r_total": 0.5},
            first={"reward/r_total": 0.1},
        ),
        "rl2": Facts(
            outputs={"Output": "s3://b/r/rl2/model"},
            metrics={"reward/r_total": 0.7, "rollout/expert_calls_per_traj": 2.0},
            first={"reward/r_total": 0.4},
        ),
        "eval": Facts(
            outputs={"pass_at_1": 0.25},
            metrics={
                "pass_at_1": 0.25,
                "pass_at_1_ci_low": 0.05,
                "pass_at_1_ci_high": 0.6,
                "episodes": 4.0,
                "expert_calls_per_task": 1.5,
            },
        ),
        "register": Facts(outputs={"version": 3, "promoted": promoted, "reason": "cleared the floor"}),
    }


def test_a_successful_run_shows_every_step_with_its_figures_and_the_lineage_command() -> None:
    summary = summarize(CFG, _clock(dict.fromkeys(TASKS, "SUCCESS")), _facts(), 60.0)
    summary.mlflow_url = "http://127.0.0.1:5000/#/experiments/1/runs/abc"
    rows = {row.step: row for row in summary.rows}
    assert list(rows) == ["verify", "synth", "sft", "rl1", "rl2", "eval", "register"]
    assert rows["verify"].figures == "12 tasks (8 train / 4 eval): gold resolves, empty fails"
    assert rows["synth"].figures.startswith("kept 8/8 trajectories, 1.0 expert calls/trajectory")
    assert rows["sft"].figures == "loss 4.500 -> 1.250, model s3://b/r/sft/model"
    assert (
        rows["rl2"].figures
        == "mean R_total 0.400 -> 0.700, 2.0 expert calls/trajectory, model s3://b/r/rl2/model"
    )
    assert rows["eval"].figures == "Pass@1 0.25 [CI 0.05, 0.60] on 4 episodes, 1.5 expert calls/task"
    assert rows["register"].figures == "v3 -> champion: cleared the floor"
    text = render(summary, "local")
    assert "rl1       SUCCESS      2.5s  mean R_total 0.100 -> 0.500, model s3://b/r/rl1/model" in text
    assert "MLflow parent run: http://127.0.0.1:5000/#/experiments/1/runs/abc" in text
    assert "registered model:  protege-agent v3, alias champion" in text
    assert "protege lineage --profile local protege-agent@champion" in text


def test_a_refused_version_is_traced_by_its_number_and_shows_the_reason() -> None:
    summary = summarize(CFG, _clock(dict.fromkeys(TASKS, "SUCCESS")), _facts(promoted=False), 1.0)
    text = render(summary, "local")
    assert "protege-agent v3, no alias (cleared the floor)" in text
    assert "protege lineage --profile local protege-agent/3" in text


def test_a_resumed_training_step_with_nothing_left_to_train_still_names_its_model() -> None:
    facts = _facts()
    facts["sft"].metrics, facts["rl1"].metrics = {}, {}
    rows = {row.step: row for row in summarize(CFG, _clock(dict.fromkeys(TASKS, "SUCCESS")), facts, 1.0).rows}
    assert rows["sft"].figures == "model s3://b/r/sft/model (no training logged)"
    assert rows["rl1"].figures == "model s3://b/r/rl1/model (no training logged)"


def test_a_failed_step_stops_the_table_there_without_inventing_figures() -> None:
    statuses = {"verify-tasks": "SUCCESS", "synth": "SUCCESS", "sft": "SUCCESS", "rl1": "FAILURE"}
    facts = {task: fact for task, fact in _facts().items() if task in ("verify-tasks", "synth", "sft")}
    summary = summarize(CFG, _clock(statuses), facts, 9.0)
    rows = {row.step: row for row in summary.rows}
    assert (rows["rl1"].status, rows["rl1"].figures) == ("FAILURE", "")
    assert [(rows[s].status, rows[s].seconds, rows[s].figures) for s in ("rl2", "eval", "register")] == [
        ("not run", None, "")
    ] * 3
    text = render(summary, "local")
    assert "registered model:  none (register did not finish)" in text
    assert "MLflow parent run: (none" in text and "protege lineage" not in text


def test_sft_names_what_it_trained_on_every_drop_and_the_uniform_guess() -> None:
    facts = _facts()
    data = {
        "data/records": 8.0,
        "data/trained_on": 4.0,
        "data/max_length": 4096.0,
        "data/uniform_loss": 8.318,
    }
    facts["sft"].metrics.update({**data, "data/dropped_too_long": 4.0, "data/dropped_no_targets": 0.0})
    rows = {row.step: row for row in summarize(CFG, _clock(dict.fromkeys(TASKS, "SUCCESS")), facts, 1.0).rows}
    assert rows["sft"].figures == (
        "trained on 4/8 trajectories: 4 over max_length 4096; "
        "loss 4.500 -> 1.250 (uniform guess 8.32), model s3://b/r/sft/model"
    )
    facts["sft"].metrics.update({"data/trained_on": 8.0, "data/dropped_too_long": 0.0})
    rows = {row.step: row for row in summarize(CFG, _clock(dict.fromkeys(TASKS, "SUCCESS")), facts, 1.0).rows}
    assert rows["sft"].figures.startswith("trained on 8/8 trajectories, none dropped; loss 4.500 -> 1.250")
