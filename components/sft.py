"""sft: supervised fine-tuning on the synth dataset (protege.sft); opens the KFP run's MLflow parent run."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Model, Output

from components.images import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE)
def sft(
    profile: str,
    overrides: str,
    base_model: str,
    dataset_uri: str,
    synth_run_id: str,
    kfp_run_id: str,
    model: Output[Model],
) -> NamedTuple("Outputs", [("model_uri", str), ("parent_run_id", str)]):
    """The first never-cached step, so the MLflow parent run opened here belongs to this KFP run alone.
    The `model` artifact is the trained model in the store, with its MLflow LoggedModel id."""
    from protege import sft
    from protege.pipeline import steps as kfp_steps

    cfg = kfp_steps.step_config(profile, overrides, kfp_run_id, model__base=base_model)
    tracker = kfp_steps.open_pipeline_run(cfg, kfp_run_id, synth_run_id, dataset_uri)
    store = kfp_steps.open_store(cfg)
    result = sft.run(cfg, dataset_uri, kfp_steps.work_dir(cfg, "sft"), tracker, store)
    uri = result["model_uri"] or result["model_dir"]
    kfp_steps.publish_artifact(
        model, uri, mlflow_model_id=result["model_id"], mlflow_pipeline_run_id=tracker.parent_run_id
    )
    return (uri, tracker.parent_run_id)
