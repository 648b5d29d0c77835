"""register: version the model in the MLflow registry; the champion gate decides the alias (protege.register)."""

from typing import NamedTuple

from kfp import dsl

from components.images import AGENT_IMAGE


@dsl.component(base_image=AGENT_IMAGE)
def register(
    profile: str,
    overrides: str,
    base_model: str,
    expert_model: str,
    model_uri: str,
    report_uri: str,
    pass_at_1: float,
    dataset_digest: str,
    eval_set_digest: str,
    kfp_run_id: str,
    parent_run_id: str,
    comparison_uri: str,
) -> NamedTuple("Outputs", [("version", int), ("promoted", bool), ("reason", str)]):
    """Outputs the registered version, whether it became `champion`, and why. `comparison_uri`: the baselines
    branch's table ('' when the branch is off); taking it makes register wait for the comparison, whose
    measurements `register.beat_baseline` reads."""
    from protege import register
    from protege.pipeline import steps as kfp_steps

    cfg = kfp_steps.step_config(
        profile, overrides, kfp_run_id, model__base=base_model, expert__model=expert_model
    )
    tracker = kfp_steps.attach_tracker(cfg, parent_run_id)
    lineage = kfp_steps.lineage(
        cfg, kfp_run_id=kfp_run_id, dataset_digest=dataset_digest, eval_set_digest=eval_set_digest
    )
    report = {"summary": {"pass_at_1": pass_at_1}, "uri": report_uri}
    result = register.run(cfg, model_uri=model_uri, eval_report=report, lineage=lineage, tracker=tracker)
    print(f"register: {result['reason']}" + (f"; comparison {comparison_uri}" if comparison_uri else ""))
    tracker.end_pipeline("FINISHED")  # the last step closes the KFP run's MLflow parent run
    return (result["version"], result["promoted"], result["reason"])
