"""rl1 and rl2: agentic GRPO stage I (loop reward) and stage II (+ follow-through) (protege.rl).

One phase, two configs (STYLE lesson 8): the components differ only in the stage they pass.
"""

from kfp import dsl
from kfp.dsl import Model, Output

from components.images import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE)
def rl1(
    profile: str,
    overrides: str,
    train_tasks: str,
    expert_model: str,
    model_uri: str,
    parent_run_id: str,
    kfp_run_id: str,
    model: Output[Model],
) -> str:
    """RL stage I from the SFT model; returns the trained model's s3:// URI (also the `model` artifact)."""
    from protege import rl
    from protege.pipeline import steps as kfp_steps

    cfg = kfp_steps.step_config(
        profile, overrides, kfp_run_id, tasks__train=train_tasks, expert__model=expert_model
    )
    tracker = kfp_steps.attach_tracker(cfg, parent_run_id)
    out = kfp_steps.work_dir(cfg, "rl1")
    result = rl.run(cfg, 1, model_uri, out, tracker=tracker, store=kfp_steps.open_store(cfg))
    kfp_steps.publish_artifact(
        model, result["model_uri"], mlflow_model_id=result["model_id"], mlflow_pipeline_run_id=parent_run_id
    )
    return result["model_uri"]


@dsl.component(base_image=TRAINER_IMAGE)
def rl2(
    profile: str,
    overrides: str,
    train_tasks: str,
    expert_model: str,
    model_uri: str,
    parent_run_id: str,
    kfp_run_id: str,
    model: Output[Model],
) -> str:
    """RL stage II from the stage I model; returns the trained model's s3:// URI (also the `model`
    artifact, the one `register` versions)."""
    from protege import rl
    from protege.pipeline import steps as kfp_steps

    cfg = kfp_steps.step_config(
        profile, overrides, kfp_run_id, tasks__train=train_tasks, expert__model=expert_model
    )
    tracker = kfp_steps.attach_tracker(cfg, parent_run_id)
    out = kfp_steps.work_dir(cfg, "rl2")
    result = rl.run(cfg, 2, model_uri, out, tracker=tracker, store=kfp_steps.open_store(cfg))
    kfp_steps.publish_artifact(
        model, result["model_uri"], mlflow_model_id=result["model_id"], mlflow_pipeline_run_id=parent_run_id
    )
    return result["model_uri"]
