"""close-run: the pipeline's exit handler; a failed KFP run leaves its MLflow parent run FAILED, never
RUNNING, tagged with the failing step (protege.pipeline.steps.close_pipeline_run)."""

from kfp import dsl

from components.images import AGENT_IMAGE


@dsl.component(base_image=AGENT_IMAGE)
def close_run(profile: str, overrides: str, kfp_run_id: str, status: dsl.PipelineTaskFinalStatus) -> str:
    """Runs after every other step, whatever their outcome; outputs what it did."""
    from protege.pipeline import steps as kfp_steps

    cfg = kfp_steps.step_config(profile, overrides, kfp_run_id)
    done = kfp_steps.close_pipeline_run(cfg, kfp_run_id, status.state, status.error_message)
    print(done)
    return done
