"""Phases rl1/rl2: the loss weights trl trains with, a failed rollout's zero advantage, a killed sandbox in a real
GRPO step, the stage plan, flat-task dropping, and rl1 -> rl2 tracked on real MLflow and s3rver servers with
rl2 resuming from rl1's last checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from protege import rl
from protege.rl import plan as rl_plan
from protege.rl.step import FlatTasks
from tests.rl_helpers import (
    SCRIPT,
    AlternatingGenerator,
    KillingOpener,
    ScriptedGenerator,
    build_tiny,
    rl_cfg,
)

ONE_STEP = ("rl.total_steps=2", "rl.stage_one_steps=1", "rl.tasks_per_step=2", "rl.group_size=2")


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from protege.demo import build_demo_repos

    path = tmp_path_factory.mktemp("repos")
    build_demo_repos(path)
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("tiny")
    return build_tiny(tmp / "model", tmp / "corpus")


@pytest.fixture(scope="module")
def tokenizer(tiny_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


# --------------------------------------------------------------------------------------------------
# The loss mask, as trl computes it
# --------------------------------------------------------------------------------------------------


def test_trl_trains_only_policy_tokens_and_gives_a_failed_rollout_zero_advantage(
    repos, tiny_dir, tokenizer, tmp_path
):
    cfg = rl_cfg(repos, tmp_path, *ONE_STEP)
    plan = rl.plan_stage(cfg, 1, str(tiny_dir), tmp_path / "out", None)
    generator = ScriptedGenerator(tokenizer)
    built = rl.build_trainer(
        cfg,
        plan,
        tmp_path / "out",
        None,
        None,
        None,
        sandbox_opener=KillingOpener(victim=2),
        generator=generator,
    )
    prompts = ["protege-demo__moneyfmt-1"] * 2 + [
        "protege-demo__csvcols-1"
    ] * 2  # as trl's sampler repeats them
    batch = built.trainer._generate_and_score_completions([{"prompt": p} for p in prompts])

    failures = built.rollout_step.history[0]["failures"]
    assert len(failures) == 1 and "killed mid-episode" in failures[0]
    killed = int(failures[0].split(":")[0].rpartition("#")[2])  # "<instance>#<row>: <reason>"
    weights = (batch["completion_mask"] * batch["tool_mask"]).tolist()
    attended = batch["completion_mask"].tolist()
    ids = batch["completion_ids"].tolist()
    for row in sorted(set(range(4)) - {killed}):  # scored rollouts: every policy token weighted, nothing else
        trained = tokenizer.decode([t for t, w in zip(ids[row], weights[row], strict=True) if w])
        context = tokenizer.decode(
            [t for t, w, a in zip(ids[row], weights[row], attended[row], strict=True) if a and not w]
        )
        assert trained == "".join(text + "<|im_end|>" for text in SCRIPT)
        assert "<expert_llm_guidance>" in context and "<tool_response>" in context and "def " in context
    # The killed rollout: no weight on any token, zero advantage, and no place in its group's baseline.
    assert sum(weights[killed]) == 0 and batch["advantages"][killed].item() == 0.0


# --------------------------------------------------------------------------------------------------
# A killed sandbox inside a real GRPO step
# --------------------------------------------------------------------------------------------------


def test_step_with_a_killed_sandbox_completes_and_records_the_failure(repos, tiny_dir, tokenizer, tmp_path):
    cfg = rl_cfg(repos, tmp_path, *ONE_STEP)
    out = tmp_path / "rl1"
    result = rl.run(
        cfg,
        1,
        str(tiny_dir),
        out,
        sandbox_opener=KillingOpener(victim=0),
        generator=ScriptedGenerator(tokenizer),
    )

    assert result["global_step"] == 1
    [step] = result["history"]
    assert step["rollout/failed"] == 1.0 and len(step["failures"]) == 1
    rows = [json.loads(line) for line in (out / "rollouts" / "step-00001.jsonl").read_text().splitlines()]
    failed = [r for r in rows if r["extra"]["rl"]["failure"]]
    assert len(rows) == 4 and len(failed) == 1
    assert (
        failed[0]["status"] == "sandbox_error" and "killed mid-episode" in failed[0]["extra"]["rl"]["failure"]
    )
    assert (Path(result["model_dir"]) / "model.safetensors").is_file()
    assert (
        json.loads((Path(result["model_dir"]) / rl.STATE_FILE).read_text())["checkpoint_uri"]
        == result["checkpoint_uri"]
    )


# --------------------------------------------------------------------------------------------------
# Resume mid-stage
# --------------------------------------------------------------------------------------------------


def _stop_after(step: int):
    from transformers import TrainerCallback

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                control.should_training_stop = True

    return Stop()


@pytest.mark.slow
def test_interrupted_stage_resumes_to_the_same_weights(repos, tiny_dir, tokenizer, tmp_path):
    from safetensors.torch import load_file

    cfg = rl_cfg(
        repos,
        tmp_path,
        *ONE_STEP,
        "rl.stage_one_steps=2",
        "rl.total_steps=3",
        "rl.rollout_workers=1",
        "rl.learning_rate=0.01",
    )
    whole = rl.run(cfg, 1, str(tiny_dir), tmp_path / "whole", generator=AlternatingGenerator(tokenizer))
    rl.run(
        cfg,
        1,
        str(tiny_dir),
        tmp_path / "cut",
        generator=AlternatingGenerator(tokenizer),
        callbacks=[_stop_after(1)],
    )
    resumed = rl.run(cfg, 1, str(tiny_dir), tmp_path / "cut", generator=AlternatingGenerator(tokenizer))

    assert resumed["resumed_from"].endswith("checkpoint-1")
    # Step 1's figures come from the cut run's history file, step 2's from the resumed run.
    assert [h["step"] for h in resumed["history"]] == [1, 2] == [h["step"] for h in whole["history"]]
    assert (
        resumed["history"][0]["rollout/format_valid_rate"] == whole["history"][0]["rollout/format_valid_rate"]
    )
    start = load_file(str(tiny_dir / "model.safetensors"))
    a = load_file(str(Path(whole["model_dir"]) / "model.safetensors"))
    b = load_file(str(Path(resumed["model_dir"]) / "model.safetensors"))
    assert any(not (a[k] == start[k]).all() for k in a), "the step must have changed the weights"
    assert all((a[k] == b[k]).all() for k in a)


# --------------------------------------------------------------------------------------------------
# Several GPUs: a torchrun relaunch whose ranks train the parent's plan
# --------------------------------------------------------------------------------------------------


def test_several_gpus_relaunch_ranks_that_train_the_parents_plan_with_real_generation(
    repos, tiny_dir, tmp_path, monkeypatch
):
    from protege import launch as sft_launch

    for name in ("LOCAL_RANK", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sft_launch, "visible_gpus", lambda cfg: 2)
    commands = []
    real_launch = sft_launch.launch

    def one_rank_in_process(command, env, check):
        # torchrun would start two ranks on two GPUs; run rank 0's entry point here, on CPU.
        from protege.services import free_port

        commands.append(command)
        rank_env = {
            "LOCAL_RANK": "0",
            "RANK": "0",
            "WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()),
        }
        for name, value in rank_env.items():
            monkeypatch.setenv(name, value)
        return type("Completed", (), {"returncode": sft_launch.main([command[-1]])})()

    monkeypatch.setattr(
        sft_launch, "launch", lambda *a, **k: real_launch(*a, **k, runner=one_rank_in_process)
    )
    cfg = rl_cfg(repos, tmp_path, *ONE_STEP, "agent.policy.max_new_tokens=24")
    result = rl.run(cfg, 1, str(tiny_dir), tmp_path / "out")

    [command] = commands
    assert "--nproc_per_node=2" in command and command[-2:] == [
        "protege.launch",
        str(tmp_path / "out" / "launch.json"),
    ]
    launch = json.loads((tmp_path / "out" / "launch.json").read_text())
    assert (
        launch["phase"] == "rl"
        and launch["plan"]["max_steps"] == 1
        and launch["plan"]["init_dir"] == str(tiny_dir)
    )
    assert result["global_step"] == 1 and result["reference_model_uri"] == str(tiny_dir.resolve())
    assert len(result["history"]) == 1 and result["history"][0]["rollout/failed"] == 0.0


# --------------------------------------------------------------------------------------------------
# Stage plan and flat tasks
# --------------------------------------------------------------------------------------------------


def test_stage_plan_curriculum(repos, tiny_dir, tmp_path):
    cfg = rl_cfg(repos, tmp_path, "rl.total_steps=10", "rl.stage_one_steps=4")
    with pytest.raises(rl.RLError, match="stage must be 1 or 2, got 3"):
        rl.plan_stage(cfg, 3, str(tiny_dir), tmp_path / "x", None)
    one = rl.plan_stage(cfg, 1, str(tiny_dir), tmp_path / "a", None)
    assert (one.max_steps, one.resume_from, one.reference_uri) == (4, None, str(tiny_dir.resolve()))
    assert one.reward == cfg.rl.stage1
    # Stage 2 from a model that is not rl1's: trains the stage II steps from it, its own reference.
    two = rl.plan_stage(cfg, 2, str(tiny_dir), tmp_path / "b", None)
    assert (two.max_steps, two.parent_checkpoint_uri, two.reward.no_call_penalty) == (6, "", -10.0)
    # Stage 2 from rl1's final model: resumes rl1's last checkpoint to total_steps, SFT stays the reference.
    rl1_model, checkpoint = tmp_path / "rl1" / "model", tmp_path / "rl1" / "checkpoints" / "checkpoint-4"
    for directory in (rl1_model, checkpoint):
        directory.mkdir(parents=True)
        (directory / "config.json").write_text((tiny_dir / "config.json").read_text())
    state = {"stage": 1, "step": 4, "reference_model_uri": str(tiny_dir), "checkpoint_uri": str(checkpoint)}
    (rl1_model / rl.STATE_FILE).write_text(json.dumps(state))
    resumed = rl.plan_stage(cfg, 2, str(rl1_model), tmp_path / "c", None)
    assert (resumed.max_steps, resumed.resume_from, resumed.parent_checkpoint_uri) == (
        10,
        checkpoint,
        str(checkpoint),
    )
    assert resumed.init_dir == tiny_dir and resumed.carried == {}


def test_plan_survives_the_launch_file(repos, tiny_dir, tmp_path):
    cfg = rl_cfg(repos, tmp_path)
    plan = rl.plan_stage(cfg, 2, str(tiny_dir), tmp_path / "b", None)
    again = rl_plan.plan_from_json(cfg, json.loads(json.dumps(rl_plan.plan_to_json(plan))))
    assert again == plan and again.reward == cfg.rl.stage2


def test_flat_tasks_are_dropped_after_max_visits_and_replaced_reproducibly():
    flat = FlatTasks(max_visits=2, seed=7)
    assert not flat.observe("a", [1.0, 1.0])
    assert not flat.observe("a", [0.0, 1.0])  # signal: not a flat visit
    assert not flat.observe("a", [0.5])  # one scored reward says nothing about flatness
    assert flat.observe("a", [-0.5, -0.5])  # second flat visit drops it
    assert flat.dropped == ["a"] and flat.visits == {"a": 2}
    assert flat.pick("b", ["a", "b", "c"], step=3, group=0) == "b"
    picks = {flat.pick("a", ["a", "b", "c"], step=3, group=g) for g in range(8)}
    assert picks <= {"b", "c"} and flat.pick("a", ["a", "b", "c"], 3, 1) == flat.pick(
        "a", ["a", "b", "c"], 3, 1
    )
    assert FlatTasks(2, 0, dropped=["a"]).pick("a", ["a"], 1, 0) == "a"  # all flat: keep what trl sampled
    assert FlatTasks(2, 0, **{"visits": {"x": 1}}).observe("x", [2.0, 2.0])


def test_too_few_training_tasks_is_a_named_error(repos, tiny_dir, tmp_path):
    cfg = rl_cfg(repos, tmp_path, "rl.tasks_per_step=9")
    with pytest.raises(rl.RLError, match=r"demo:train: 8 training task\(s\), fewer than rl.tasks_per_step=9"):
        rl.training_tasks(cfg, None)


def test_cli_help_names_the_stage_and_model():
    out = subprocess.run(
        [sys.executable, "-m", "protege.cli", "rl", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "--stage {1,2}" in out.stdout and "--model" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "protege.cli", "rl", "--stage", "3", "--model", "x"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "invalid choice: 3" in bad.stderr


# --------------------------------------------------------------------------------------------------
# rl1 -> rl2 on real servers
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_rl1_then_rl2_tracked_with_lineage_and_resume(
    repos, tiny_dir, tokenizer, s3_server, mlflow_server, tmp_path
):
    from protege.config import TrackingConfig
    from protege.store import S3ArtifactStore
    from protege.tracking import Tracker

    store = S3ArtifactStore.from_config(
        s3_server.store_config().model_copy(update={"bucket": f"rl-{uuid.uuid4().hex[:10]}"})
    )
    store.ensure_bucket()
    tracker = Tracker(mlflow_server.tracking_config(TrackingConfig(experiment=f"rl-{uuid.uuid4().hex[:8]}")))
    cfg = rl_cfg(
        repos, tmp_path, "rl.total_steps=3", "rl.stage_one_steps=2", "rl.tasks_per_step=1", "rl.group_size=2"
    )
    generator = ScriptedGenerator(tokenizer)
    one = rl.run(cfg, 1, str(tiny_dir), tmp_path / "rl1", tracker, store, generator=generator)
    two = rl.run(cfg, 2, one["model_uri"], tmp_path / "rl2", tracker, store, generator=generator)

    assert one["model_uri"].startswith("s3://") and one["global_step"] == 2 and two["global_step"] == 3
    assert one["checkpoint_uri"].endswith("/rl1/checkpoints/checkpoint-2")
    assert two["parent_checkpoint_uri"] == one["checkpoint_uri"]
    assert two["reference_model_uri"] == one["reference_model_uri"] == str(tiny_dir.resolve())
    client = tracker.client
    for result, steps in ((one, [1, 2]), (two, [3])):
        run = client.get_run(result["mlflow_run_id"])
        for key in (
            "reward/r_total",
            "reward/r_correct",
            "reward/r_sim",
            "reward/r_loop",
            "reward/r_expert",
            "reward/r_follow",
            "reward/g_loop",
            "rollout/expert_calls_per_traj",
            "rollout/steps_per_traj",
            "rollout/loop_rate_gt10",
            "rollout/failed",
            "train/loss",
        ):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == steps, key
        assert client.get_metric_history(run.info.run_id, "rollout/expert_calls_per_traj")[0].value == 1.0
        assert client.get_metric_history(run.info.run_id, "rollout/steps_per_traj")[0].value == len(SCRIPT)
        # tracking.trace_sample=2 rollouts of each step are traces, one TOOL span per step of the script.
        traces = client.search_traces(locations=[tracker.experiment_id], run_id=run.info.run_id)
        assert sorted(t.info.tags["step"] for t in traces) == sorted(str(s) for s in steps for _ in range(2))
        assert all(len([s for s in t.data.spans if s.span_type == "TOOL"]) == len(SCRIPT) for t in traces)
    # rl2's first checkpoint descends from rl1's last (LoggedModel tags and the checkpoint's own record).
    first = tracker.logged_models(two["mlflow_run_id"])
    by_step = {int(m.params["step"]): m for m in first}
    assert by_step[3].tags[rl.TAG_PARENT] == one["checkpoint_uri"] and by_step[3].tags[rl.TAG_STAGE] == "2"
    assert (
        json.loads((tmp_path / "rl2" / "checkpoints" / "checkpoint-3" / rl.STATE_FILE).read_text())[
            "parent_checkpoint_uri"
        ]
        == one["checkpoint_uri"]
    )
    assert store.exists(f"{one['checkpoint_uri']}/optimizer.pt") and store.exists(
        f"{one['checkpoint_uri']}/scheduler.pt"
    )

    # A rerun of rl1 on a fresh disk resumes from the stored last checkpoint: no rollout is played again.
    again = rl.run(cfg, 1, str(tiny_dir), tmp_path / "rl1-again", tracker, store, generator=generator)
    assert (
        again["resumed_from"].endswith("checkpoint-2")
        and again["global_step"] == 2
        and again["history"] == []
    )
