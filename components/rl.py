"""rl1 and rl2: agentic GRPO stage I (loop reward) and stage II (+ follow-through) (protege.rl).

One phase, two configs (STYLE lesson 8): both components run `protege.pipeline.steps.rl` and differ only in
the stage they pass. They stay two components, not one taking the stage, because KFP names a task after
its component (a second use becomes `rl-2`; `.set_display_name` changes only the label), and the task
names `rl1`/`rl2` key the placement, the local run's outputs and the run summary.
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
    from protege.pipeline import steps

    args = (profile, overrides, train_tasks, expert_model, model_uri, parent_run_id, kfp_run_id)
    return steps.rl(1, *args, model)


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
    from protege.pipeline import steps

    args = (profile, overrides, train_tasks, expert_model, model_uri, parent_run_id, kfp_run_id)
    return steps.rl(2, *args, model)
