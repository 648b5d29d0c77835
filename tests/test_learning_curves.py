"""bench/learning.py's outputs: the RL step figures it reads, the PNG it draws and the curves it puts on the
pipeline's MLflow run (a real MLflow server), from a results document shaped like a run's."""

from __future__ import annotations

import json
import uuid

from bench import learning
from protege.config import TrackingConfig
from protege.rl.step import format_valid_rate
from protege.tracking import Tracker
from protege.trajectory import Message, Trajectory


def _trajectory(turns: int, errors: int) -> Trajectory:
    messages = [Message(role="assistant", provenance="policy", content="t") for _ in range(turns)]
    return Trajectory(
        instance_id="a__b-1", messages=messages, status="submitted", extra={"format_errors": errors}
    )


def test_format_valid_rate_counts_policy_turns_without_a_format_error():
    assert format_valid_rate([_trajectory(4, 1), _trajectory(6, 0)]) == 0.9
    assert format_valid_rate([]) == 0.0


def _doc() -> dict:
    history = [
        {
            "step": s,
            "reward/r_total": -1.0 + s / 4,
            "reward/r_loop": 0.0,
            "rollout/format_valid_rate": 0.5 + s / 10,
            "rollout/groups_with_advantage": 0.5,
            "rollout/expert_calls_per_traj": 1.0,
            "rollout/steps_per_traj": 8.0,
            "rollout/failed": 0.0,
        }
        for s in (1, 2)
    ]
    row = {k: 0.1 for k in learning.TABLE_KEYS} | {"format_valid_rate": 0.9, "model": "m"}
    return {
        "run_name": "learn-test",
        "wall_s": 600.0,
        "sft": {
            "loss": [8.0, 5.0, 3.0],
            "format_check": {"base": {"well_formed_share": 0.0}, "sft": {"well_formed_share": 0.5}},
        },
        "rl1": learning.rl_curves(history),
        "rl2": learning.rl_curves(history),
        "table": {name: dict(row, pass_at_1=0.1 * n) for n, name in enumerate(learning.MODELS)},
    }


def test_curves_are_drawn_and_logged_on_the_pipeline_run(tmp_path, mlflow_server):
    doc = _doc()
    assert doc["rl1"]["step"] == [1, 2] and doc["rl1"]["rollout/format_valid_rate"] == [0.6, 0.7]
    files = [tmp_path / "learning.json", tmp_path / "learning.png"]
    files[0].write_text(json.dumps(doc))
    learning.plot(doc, files[1])
    assert files[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and files[1].stat().st_size > 20_000

    suffix = uuid.uuid4().hex[:8]
    tracker = Tracker(mlflow_server.tracking_config(TrackingConfig(experiment=f"exp-{suffix}")))
    run_id = tracker.ensure_pipeline("learn-test")
    learning.log_to_tracker(tracker, doc, files)

    history = tracker.client.get_metric_history(run_id, "learning/pass_at_1")
    assert sorted((m.step, round(m.value, 3)) for m in history) == [(0, 0.0), (1, 0.1), (2, 0.2), (3, 0.3)]
    assert {a.path for a in tracker.client.list_artifacts(run_id, "learning")} == {
        "learning/learning.json",
        "learning/learning.png",
    }
