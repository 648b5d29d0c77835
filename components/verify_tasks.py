"""verify-tasks: grade every task's gold patch (must resolve) and an empty patch (must not)."""

from typing import NamedTuple

from kfp import dsl

from components.images import AGENT_IMAGE


@dsl.component(base_image=AGENT_IMAGE)
def verify_tasks(profile: str, overrides: str, train_tasks: str, eval_tasks: str) -> NamedTuple(
    "Outputs", [("report_uri", str), ("tasks_digest", str), ("eval_set_digest", str)]
):
    """Fails naming every broken instance; outputs the verify report URI and the task sets' digests."""
    from protege.pipeline import steps as kfp_steps

    cfg = kfp_steps.step_config(profile, overrides, tasks__train=train_tasks, tasks__eval=eval_tasks)
    result = kfp_steps.verify(cfg, kfp_steps.open_store(cfg))
    return (result["report_uri"], result["tasks_digest"], result["eval_set_digest"])
