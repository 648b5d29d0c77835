"""The optional baselines branch (issue 19): `baseline` measures one standard variant on the eval split,
`compare` puts this run's model, the champion and the baselines in one table (protege.compare.steps),
`no_baselines` stands in when the branch is off so register has one input either way."""

from kfp import dsl

from components.images import AGENT_IMAGE, TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE)  # a model variant is served like the eval step's model
def baseline(
    profile: str,
    overrides: str,
    eval_tasks: str,
    expert_model: str,
    variant: str,
    base_model: str,
    sft_uri: str,
    rl1_uri: str,
    rl2_uri: str,
    kfp_run_id: str,
) -> str:
    """Outputs the variant's eval results URI in the artifact store."""
    from protege.compare import steps
    from protege.pipeline import steps as kfp_steps

    config_for = kfp_steps.step_configs(
        profile, overrides, kfp_run_id, tasks__eval=eval_tasks, expert__model=expert_model
    )
    models = {"base": base_model or config_for([]).model.base, "sft": sft_uri, "rl1": rl1_uri, "rl2": rl2_uri}
    return steps.baseline_step(config_for, variant, models, kfp_steps.open_store(config_for([])))


@dsl.component(base_image=AGENT_IMAGE)
def compare(
    profile: str,
    overrides: str,
    eval_tasks: str,
    expert_model: str,
    model_results_uri: str,
    baseline_uris: list,
    kfp_run_id: str,
) -> str:
    """Outputs the URI of the comparison table (compare.md) in the artifact store."""
    from protege.compare import steps
    from protege.pipeline import steps as kfp_steps
    from protege.tracking import Tracker

    config_for = kfp_steps.step_configs(
        profile, overrides, kfp_run_id, tasks__eval=eval_tasks, expert__model=expert_model
    )
    cfg = config_for([])
    store = kfp_steps.open_store(cfg)
    return steps.compare_step(config_for, model_results_uri, baseline_uris, store, Tracker(cfg.tracking))


@dsl.component(base_image=AGENT_IMAGE)
def no_baselines() -> str:
    """The branch is off: no comparison table."""
    return ""
