"""eval: run the trained protégé on the eval split, grade, report (protege.evaluate)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Output

from components.images import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE)  # vLLM and CUDA: the step serves the model it evaluates
def eval(  # noqa: A001 - `eval` is the phase's name everywhere (STYLE lesson 13), the KFP task name too
    profile: str,
    overrides: str,
    eval_tasks: str,
    expert_model: str,
    model_uri: str,
    parent_run_id: str,
    kfp_run_id: str,
    report: Output[Artifact],
) -> NamedTuple("Outputs", [("report_uri", str), ("pass_at_1", float), ("mlflow_run_id", str)]):
    """Outputs the results URI in the artifact store, Pass@1 and the nested MLflow run id; the `report`
    artifact is the results directory in the store, with Pass@1 and its interval. On the GPU pool
    (`eval.serve: vllm`, cluster profile) a vLLM server of `model_uri` answers for the policy meanwhile."""
    from protege import evaluate
    from protege.evaluate import serving
    from protege.pipeline import steps as kfp_steps

    cfg = kfp_steps.step_config(
        profile, overrides, kfp_run_id, tasks__eval=eval_tasks, expert__model=expert_model
    )
    tracker = kfp_steps.attach_tracker(cfg, parent_run_id)
    store = kfp_steps.open_store(cfg)
    work = kfp_steps.work_dir(cfg, "eval")
    with serving.served_policy(cfg, model_uri, store, work) as served:
        result = evaluate.run(served, model_uri, work, tracker, store)
    summary = result["summary"]
    kfp_steps.publish_artifact(
        report,
        result["uri"] or result["out_dir"],
        pass_at_1=summary["pass_at_1"],
        pass_at_1_ci=[summary["pass_at_1_ci_low"], summary["pass_at_1_ci_high"]],
        mlflow_run_id=result["mlflow_run_id"],
    )
    return (result["uri"], float(summary["pass_at_1"]), result["mlflow_run_id"] or "")
