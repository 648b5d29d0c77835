"""Phases rl1 and rl2 (METHOD §5): agentic GRPO with trl's GRPOTrainer, one code path, two reward configs.

    protege rl --stage 1 --profile local --model .protege/runs/protege/sft/model
    protege rl --stage 2 --profile local --model .protege/runs/protege/rl1/model

What a step does (trl `rollout_func`, which receives every prompt already repeated G times):
1. Each group of G prompts names one training task; a task dropped for flat rewards is replaced by an
   active one (seeded, the same for the whole group).
2. Every rollout is a full agent episode in a sandbox with bash, the editor, submit and ask_expert
   (protege.rl.rollout): G × `rl.tasks_per_step` of them, `rl.rollout_workers` at a time, each under
   `rl.rollout_timeout_s`. Its training sequence is the exact ids generated, with every observation and
   every expert reply masked out of the loss (`env_mask`).
3. Each submitted patch is re-graded in a fresh sandbox (R_correct); the hidden judge scores the expert calls;
   protege.rl.rewards computes every term of R_total for the stage. A failed rollout has no reward, so trl gives
   it zero advantage and leaves it out of its group's baseline; its reason is written down.
4. The batch mean of every term, expert calls and steps per trajectory, the loop rates and the failures are
   logged to the MLflow `rl1`/`rl2` run at the step; every rollout goes to `rollouts.jsonl` (and the store).
5. A task whose G rewards were all identical `rl.max_flat_visits` times is dropped (logged by name).

The curriculum: rl1 trains `rl.stage_one_steps` steps from the SFT model with the stage I reward; rl2 resumes
the trainer from rl1's last checkpoint (weights, optimizer, scheduler, RNG, step) and runs to
`rl.total_steps` with the stage II reward. The KL reference is the SFT model in both stages. Checkpoints
(with a `protege_rl.json` naming stage, step, reference and parent checkpoint) go to the store and are
MLflow LoggedModels; a rerun resumes from the latest one, local or stored. The final model directory holds
the weights, the tokenizer and `protege_rl.json` pointing at the last checkpoint (rl2 reads it).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from protege.config import ProtegeConfig, public_dict
from protege.rl.plan import (
    CHECKPOINTS,
    STATE_FILE,
    RLError,
    StagePlan,
    checkpoint_step,
    plan_from_json,
    plan_stage,
    plan_to_json,
)
from protege.rl.rollout import RolloutContext, SandboxGate
from protege.rl.step import FlatTasks, RolloutStep, trajectory_reward
from protege.store import sha256_text

MODEL = "model"
TAG_STAGE = "protege.rl_stage"
TAG_PARENT = "protege.parent_checkpoint"
TAG_REFERENCE = "protege.reference_model"
TAG_REWARD_HASH = "protege.reward_config_hash"


# --------------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------------


def grpo_args(cfg: ProtegeConfig, plan: StagePlan, out_dir: Path, world_size: int, gpu: bool) -> Any:
    """trl.GRPOConfig: one optimizer step = `rl.tasks_per_step` groups of G rollouts, generated in one batch."""
    import torch
    from trl import GRPOConfig

    from protege.training import DEEPSPEED_DIR

    r = cfg.rl
    if r.tasks_per_step % world_size:
        raise RLError(
            f"rl.tasks_per_step={r.tasks_per_step} is not a multiple of the {world_size} training processes"
        )
    return GRPOConfig(
        output_dir=str(out_dir / CHECKPOINTS),
        max_steps=plan.max_steps,
        seed=r.seed,
        data_seed=r.seed,
        per_device_train_batch_size=r.group_size,
        gradient_accumulation_steps=r.tasks_per_step // world_size,
        num_generations=r.group_size,
        learning_rate=r.learning_rate,
        lr_scheduler_type=r.lr_scheduler,
        max_grad_norm=r.max_grad_norm,
        beta=r.beta,
        epsilon=r.epsilon_low,
        epsilon_high=r.epsilon_high,
        loss_type=r.loss_type,
        temperature=r.temperature,
        scale_rewards="group",
        max_completion_length=cfg.agent.policy.max_new_tokens,  # per turn: the vLLM request limit
        use_vllm=r.use_vllm and gpu,
        vllm_mode=r.vllm_mode,
        vllm_server_base_url=r.vllm_server_base_url or None,
        vllm_gpu_memory_utilization=r.vllm_gpu_memory_utilization,
        vllm_enable_sleep_mode=False,  # rollouts call the engine per turn (protege.rl.generation): keep it awake
        bf16=r.bf16 and gpu and torch.cuda.is_bf16_supported(),
        activation_checkpointing=r.gradient_checkpointing and gpu,
        deepspeed=str(DEEPSPEED_DIR / f"{r.deepspeed}.json") if r.deepspeed and gpu else None,
        save_strategy="steps",
        save_steps=r.save_steps,
        save_total_limit=r.save_total_limit or None,
        logging_steps=1,
        use_cpu=not gpu,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        mask_truncated_completions=False,  # an episode cut at a turn limit still earns its reward
    )


class Lineage:
    """Publishes checkpoints and the final model: protege_rl.json into the directory, then the store and an
    MLflow LoggedModel. `store`/`tracker` may be None (local paths are then the URIs)."""

    def __init__(
        self,
        cfg: ProtegeConfig,
        plan: StagePlan,
        flat: FlatTasks,
        store: Any,
        tracker: Any,
        run_id: str | None,
    ) -> None:
        self.cfg, self.plan, self.flat, self.store, self.tracker, self.run_id = (
            cfg,
            plan,
            flat,
            store,
            tracker,
            run_id,
        )
        self.prefix = store.uri(f"{cfg.run_name}/{plan.phase}") if store is not None else ""
        self.published: list[dict[str, Any]] = []

    def uri(self, local_dir: Path, name: str) -> str:
        return f"{self.prefix}/{name}" if self.store is not None else str(local_dir.resolve())

    def state(self, step: int, **extra: Any) -> dict[str, Any]:
        return {
            "stage": self.plan.stage,
            "phase": self.plan.phase,
            "step": step,
            "reference_model_uri": self.plan.reference_uri,
            "parent_checkpoint_uri": self.plan.parent_checkpoint_uri,
            **self.flat.state(),
            **extra,
        }

    def publish(self, local_dir: Path, name: str, step: int, **extra: Any) -> dict[str, Any]:
        (local_dir / STATE_FILE).write_text(json.dumps(self.state(step, **extra), indent=2) + "\n")
        uri, model_id = self.uri(local_dir, name), None
        if self.store is not None:
            self.store.upload_dir(local_dir, uri)
        if self.tracker is not None and self.run_id:
            reward_hash = sha256_text(json.dumps(public_dict(self.plan.reward), sort_keys=True))
            tags = {
                TAG_STAGE: str(self.plan.stage),
                TAG_REFERENCE: self.plan.reference_uri,
                TAG_REWARD_HASH: reward_hash,
            }
            if self.plan.parent_checkpoint_uri:
                tags[TAG_PARENT] = self.plan.parent_checkpoint_uri
            model_id = self.tracker.log_checkpoint(
                self.run_id,
                f"{self.cfg.run_name}-{self.plan.phase}",
                uri,
                {"step": step, "stage": self.plan.stage},
                tags,
                wait=name == MODEL,
            )
            if name == MODEL:
                self.tracker.link_model(self.plan.phase, uri, model_id)
        entry = {"step": step, "uri": uri, "model_id": model_id}
        self.published.append(entry)
        return entry


def make_callbacks(lineage: Lineage) -> list[Any]:
    """Trainer logs (loss, kl, clip ratios, ...) to the phase run as `train/*`; each checkpoint published."""
    from transformers import TrainerCallback

    from protege.training import checkpoint_callback

    class MetricsCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 (Trainer's signature)
            numeric = {f"train/{k}": float(v) for k, v in (logs or {}).items() if isinstance(v, int | float)}
            if state.is_world_process_zero and numeric and lineage.tracker is not None and lineage.run_id:
                lineage.tracker.log_metrics(lineage.run_id, numeric, step=state.global_step)

    return [MetricsCallback(), checkpoint_callback(lineage)]


def training_tasks(cfg: ProtegeConfig, store: Any) -> dict[str, Any]:
    """The training split by instance id (the local sandbox's demo repositories are built when missing)."""
    from protege.tasksets import train_tasks

    tasks = train_tasks(cfg, store, error=RLError)
    if len(tasks) < cfg.rl.tasks_per_step:
        raise RLError(
            f"{cfg.tasks.train}: {len(tasks)} training task(s), fewer than rl.tasks_per_step="
            f"{cfg.rl.tasks_per_step}"
        )
    return {task.instance_id: task for task in tasks}


def _load_policy_model(cfg: ProtegeConfig, model_dir: Path, gpu: bool) -> tuple[Any, Any]:
    from protege.agent.chat_format import chat_format
    from protege.model import load_model_and_tokenizer

    dtype = cfg.model.dtype if gpu else "float32"
    model, tokenizer = load_model_and_tokenizer(
        model_dir, dtype, "cuda" if gpu else "cpu", cfg.model.attn_implementation
    )
    chat_format(tokenizer)  # a template protege cannot render or parse is refused before any rollout
    return model, tokenizer


@dataclasses.dataclass
class Built:
    """A ready GRPOTrainer and the objects it reports through."""

    trainer: Any
    rollout_step: RolloutStep
    lineage: Lineage
    flat: FlatTasks


def build_trainer(
    cfg: ProtegeConfig,
    plan: StagePlan,
    out_dir: Path,
    store: Any,
    tracker: Any,
    run_id: str | None,
    callbacks: Sequence[Any] = (),
    sandbox_opener: Any = None,
    generator: Any = None,
) -> Built:
    """The GRPOTrainer for `plan` with protege's rollout_func. `generator` (a protege.rl.rollout.Generator)
    replaces the trainer's own generation (vLLM on GPU, the training model otherwise): tests script turns."""
    import os

    from datasets import Dataset
    from trl import GRPOTrainer

    from protege.agent.expert import ExpertService
    from protege.agent.sandbox import open_sandbox
    from protege.grading import grade
    from protege.rl.generation import make_generator
    from protege.rl.judge import make_judge
    from protege.tasksets import log_task_set
    from protege.training import ensure_process_group_env, on_gpu

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is the documented way in; no banner
    tasks = training_tasks(cfg, store)
    gpu = on_gpu(cfg)
    if gpu and cfg.rl.deepspeed:
        ensure_process_group_env(cfg)
    args = grpo_args(cfg, plan, out_dir, int(os.environ.get("WORLD_SIZE", "1")), gpu)
    model, tokenizer = _load_policy_model(cfg, plan.init_dir, gpu)
    flat = FlatTasks(
        cfg.rl.max_flat_visits,
        cfg.rl.seed,
        plan.carried.get("flat_visits"),
        plan.carried.get("dropped_tasks", ()),
    )
    expert = ExpertService(
        cfg.expert.model_copy(update={"gold_patch": False})
    )  # RL never shows the gold patch
    r = cfg.rl
    gate = SandboxGate(
        sandbox_opener or open_sandbox,
        r.sandbox_start_interval_s,
        r.sandbox_start_retries,
        r.sandbox_start_backoff_s,
    )
    ctx = RolloutContext(
        cfg,
        plan.reward,
        generator,
        tokenizer,
        f"{plan.phase}:{plan.reference_uri}",
        expert,
        make_judge(plan.reward, expert),
        gate,
        out_dir / "grading",
        grade,
        plan.phase,
    )
    rollout_step = RolloutStep(cfg, plan, tasks, ctx, flat, out_dir, tracker, run_id, store)
    if tracker is not None and run_id:
        log_task_set(tracker, run_id, "train-tasks", cfg.tasks.train, list(tasks.values()), "training")
    lineage = Lineage(cfg, plan, flat, store, tracker, run_id)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[trajectory_reward],
        args=args,
        processing_class=tokenizer,
        train_dataset=Dataset.from_list([{"prompt": iid} for iid in sorted(tasks)]),
        rollout_func=rollout_step,
        callbacks=[*make_callbacks(lineage), *callbacks],
    )
    if generator is None:
        rollout_step.ctx.generator = make_generator(
            trainer, tokenizer, r.temperature, r.rollout_workers, r.generation_batch_window_s
        )
    return Built(trainer, rollout_step, lineage, flat)


def train(built: Built, plan: StagePlan, out_dir: Path) -> dict[str, Any]:
    """Train (resuming when the plan says so), save and publish the final model."""
    trainer, lineage = built.trainer, built.lineage
    if plan.completed:
        trainer._load_from_checkpoint(str(plan.resume_from))  # the Trainer's own weight loader (sharded, DS)
        step = checkpoint_step(plan.resume_from)  # type: ignore[arg-type]
    else:
        trainer.train(resume_from_checkpoint=str(plan.resume_from) if plan.resume_from else None)
        step = trainer.state.global_step
    trainer.save_model(str(out_dir / MODEL))  # weights + tokenizer, no optimizer
    last = (
        lineage.published[-1]["uri"]
        if lineage.published
        else lineage.uri(Path(plan.resume_from or ""), f"{CHECKPOINTS}/checkpoint-{step}")
    )
    final = lineage.publish(out_dir / MODEL, MODEL, step, checkpoint_uri=last)
    return {
        "stage": plan.stage,
        "model_dir": str(out_dir / MODEL),
        "model_uri": final["uri"],
        "model_id": final["model_id"],
        "checkpoint_uri": last,
        "checkpoints": lineage.published[:-1],
        "global_step": step,
        "reference_model_uri": plan.reference_uri,
        "parent_checkpoint_uri": plan.parent_checkpoint_uri,
        "resumed_from": str(plan.resume_from) if plan.resume_from else None,
        "dropped_tasks": list(built.flat.dropped),
        "history": built.rollout_step.history,
        "mlflow_run_id": lineage.run_id,
    }


@contextmanager
def _phase_run(cfg: ProtegeConfig, plan: StagePlan, model_uri: str, tracker: Any):
    """The nested `rl1`/`rl2` MLflow run (opening the pipeline run if needed), or None without a tracker."""
    if tracker is None:
        yield None
        return
    tracker.ensure_pipeline(cfg.run_name, cfg)
    flat_rl = {f"rl.{k}": v for k, v in public_dict(cfg.rl).items() if k not in ("stage1", "stage2")}
    reward = {f"reward.{k}": v for k, v in public_dict(plan.reward).items()}
    tags = {TAG_STAGE: str(plan.stage), TAG_REFERENCE: plan.reference_uri, "protege.start_model": model_uri}
    if plan.parent_checkpoint_uri:
        tags[TAG_PARENT] = plan.parent_checkpoint_uri
    with tracker.phase(plan.phase, params={**flat_rl, **reward}, tags=tags) as phase:
        yield phase.run_id


def run(
    cfg: ProtegeConfig,
    stage: int,
    model_uri: str,
    out_dir: str | Path,
    tracker: Any = None,
    store: Any = None,
    *,
    callbacks: Sequence[Any] = (),
    sandbox_opener: Any = None,
    generator: Any = None,
) -> dict[str, Any]:
    """Train RL stage `stage` (1 or 2) from `model_uri` (local dir or s3://) into `out_dir`.

    `tracker`: protege.tracking.Tracker (nested `rl1`/`rl2` run: per-step reward terms and rollout figures,
    trainer logs as `train/*`, one LoggedModel per checkpoint); `store`: protege.store.S3ArtifactStore
    (checkpoints, the final model and each step's rollouts are uploaded). `callbacks`: extra transformers
    TrainerCallbacks; `sandbox_opener`: replaces protege.agent.sandbox.open_sandbox; `generator`: replaces
    the trainer's generation (both for tests).
    With several visible GPUs and no distributed environment it relaunches itself under torchrun (one rank per
    GPU, each playing its share of the step's rollouts; the returned dict is then rank 0's).
    Returns {"stage", "model_dir", "model_uri", "model_id", "checkpoint_uri", "checkpoints", "global_step",
    "reference_model_uri", "parent_checkpoint_uri", "resumed_from", "dropped_tasks", "history", "mlflow_run_id"}.
    """
    from protege import launch
    from protege.rl.rollout import check_history_view

    try:
        check_history_view(cfg)
    except ValueError as err:
        raise RLError(str(err)) from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_stage(cfg, stage, model_uri, out_dir, store)  # once, here: ranks of a relaunch reuse it
    gpus = launch.visible_gpus(cfg)
    if launch.should_relaunch(cfg, gpus):
        phase_args = {"phase": "rl", "model_uri": model_uri, "plan": plan_to_json(plan)}
        return launch.launch(cfg, f"{__name__}:run_launched", phase_args, out_dir, tracker, store, nproc=gpus)
    return run_planned(cfg, plan, model_uri, out_dir, tracker, store, callbacks, sandbox_opener, generator)


def run_launched(cfg: ProtegeConfig, launch: dict[str, Any], out_dir: Path, tracker: Any, store: Any) -> dict:
    """One rank of a relaunch (protege.launch calls it): trains the plan the parent made."""
    plan = plan_from_json(cfg, launch["plan"])
    return run_planned(cfg, plan, launch["model_uri"], out_dir, tracker, store)


def run_planned(
    cfg: ProtegeConfig,
    plan: StagePlan,
    model_uri: str,
    out_dir: Path,
    tracker: Any = None,
    store: Any = None,
    callbacks: Sequence[Any] = (),
    sandbox_opener: Any = None,
    generator: Any = None,
) -> dict[str, Any]:
    """Train a planned stage in this process (a lone process, or one rank of a torchrun relaunch)."""
    from protege.launch import is_world_main

    with _phase_run(cfg, plan, model_uri, tracker if is_world_main() else None) as run_id:
        built = build_trainer(
            cfg, plan, out_dir, store, tracker, run_id, callbacks, sandbox_opener, generator
        )
        return train(built, plan, out_dir)
