"""synth: expert-augmented trajectory synthesis into the SFT dataset (protege.synth)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.images import AGENT_IMAGE


@dsl.component(base_image=AGENT_IMAGE)
def synth(
    profile: str,
    overrides: str,
    train_tasks: str,
    expert_model: str,
    tasks_digest: str,
    dataset: Output[Dataset],
) -> NamedTuple("Outputs", [("dataset_uri", str), ("dataset_digest", str), ("mlflow_run_id", str)]):
    """`tasks_digest` (verify's output) orders this step after verify and keys its cache. Its MLflow run is
    a step record of its own; `sft` copies it into the KFP run's parent run (kfp_steps.adopt_run). The
    `dataset` artifact is the SFT dataset in the store (its URI), with its sha256."""
    from protege import synth
    from protege.pipeline import steps as kfp_steps

    cfg = kfp_steps.step_config(profile, overrides, tasks__train=train_tasks, expert__model=expert_model)
    store = kfp_steps.open_store(cfg)
    tracker = kfp_steps.step_tracker(cfg, "synth")
    result = synth.run(cfg, kfp_steps.work_dir(cfg, "synth"), tracker, store)
    kfp_steps.publish_artifact(dataset, result["uri"] or result["dataset"], sha256=result["digest"])
    return (result["uri"], result["digest"], result["mlflow_run_id"] or "")
