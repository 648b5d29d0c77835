"""The SWE-Protégé pipeline: verify -> synth -> sft -> rl1 -> rl2 -> eval -> register (METHOD.md).

This file only wires the steps, inside an exit handler (`close-run`, components/close_run) that closes
the MLflow parent run FAILED with the failing step when any step fails; `protege.pipeline.placement.place` gives each its resources, GPU pool,
secrets, caching, retries and timeout. Compile with `protege compile` (writes protege_pipeline.yaml next
to this file; CI fails when it is stale); run with `protege submit --host URL` or locally through
`kfp.local.SubprocessRunner(use_venv=False)`, where the Kubernetes settings are ignored.
"""

from typing import Any

from kfp import dsl

from components.close_run import close_run
from components.evaluate import eval as eval_step
from components.register import register
from components.rl import rl1, rl2
from components.sft import sft
from components.synth import synth
from components.verify_tasks import verify_tasks
from protege.config import PipelineConfig
from protege.pipeline.placement import GpuPool, place

PIPELINE = PipelineConfig()


def steps(
    common: dict[str, Any],
    pool: GpuPool,
    base_model: Any,
    train_tasks: Any,
    eval_tasks: Any,
    expert_model: Any,
) -> None:
    """verify -> synth -> sft -> rl1 -> rl2 -> eval -> register, each placed."""
    verified = verify_tasks(**common, train_tasks=train_tasks, eval_tasks=eval_tasks)
    place(verified, "verify", PIPELINE, pool)

    data = synth(
        **common,
        train_tasks=train_tasks,
        expert_model=expert_model,
        tasks_digest=verified.outputs["tasks_digest"],
    )
    place(data, "synth", PIPELINE, pool)

    tuned = sft(
        **common,
        base_model=base_model,
        dataset_uri=data.outputs["dataset_uri"],
        synth_run_id=data.outputs["mlflow_run_id"],
        kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
    )
    place(tuned, "sft", PIPELINE, pool)
    parent = tuned.outputs["parent_run_id"]

    stage1 = rl1(
        **common,
        train_tasks=train_tasks,
        expert_model=expert_model,
        model_uri=tuned.outputs["model_uri"],
        parent_run_id=parent,
        kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
    )
    place(stage1, "rl1", PIPELINE, pool)

    stage2 = rl2(
        **common,
        train_tasks=train_tasks,
        expert_model=expert_model,
        model_uri=stage1.outputs["Output"],
        parent_run_id=parent,
        kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
    )
    place(stage2, "rl2", PIPELINE, pool)

    evaluated = eval_step(
        **common,
        eval_tasks=eval_tasks,
        expert_model=expert_model,
        model_uri=stage2.outputs["Output"],
        parent_run_id=parent,
        kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
    )
    place(evaluated, "eval", PIPELINE, pool)

    registered = register(
        **common,
        base_model=base_model,
        expert_model=expert_model,
        model_uri=stage2.outputs["Output"],
        report_uri=evaluated.outputs["report_uri"],
        pass_at_1=evaluated.outputs["pass_at_1"],
        dataset_digest=data.outputs["dataset_digest"],
        eval_set_digest=verified.outputs["eval_set_digest"],
        kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        parent_run_id=parent,
    )
    place(registered, "register", PIPELINE, pool)


def build(exit_handler: bool) -> Any:
    """The pipeline; `exit_handler` wraps the steps in dsl.ExitHandler(close-run). kfp.local runs the one
    without it (an exit handler sends kfp.local to its other orchestrator), and protege.pipeline.local closes
    the parent run of a failed local run itself (kfp_local.fail_parent_run, the same code as close-run)."""

    @dsl.pipeline(name=PIPELINE.name, description="Train a small SWE agent that knows when to ask an expert.")
    def protege_pipeline(
        profile: str = "cluster",
        base_model: str = "",
        train_tasks: str = "",
        eval_tasks: str = "",
        expert_model: str = "",
        overrides: str = "[]",
        gpu_type: str = "nvidia.com/gpu",
        gpu_count: int = 8,
        gpu_node_selector: dict = {},  # noqa: B006 - KFP reads parameter defaults from the signature
        gpu_tolerations: list = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],  # noqa: B006
    ) -> None:
        """Empty `base_model`/`*_tasks`/`expert_model` keep the profile's; `overrides` is a JSON list of
        `dotted.key=value`; the `gpu_*` parameters choose the pool of the GPU steps (sft, rl1, rl2, eval)."""
        pool = GpuPool(gpu_type, gpu_count, gpu_node_selector, gpu_tolerations)
        common = {"profile": profile, "overrides": overrides}
        wired = {
            "base_model": base_model,
            "train_tasks": train_tasks,
            "eval_tasks": eval_tasks,
            "expert_model": expert_model,
        }
        if not exit_handler:
            steps(common, pool, **wired)
            return
        closer = close_run(**common, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        place(closer, "close", PIPELINE, pool)
        with dsl.ExitHandler(closer, name="steps"):
            steps(common, pool, **wired)

    return protege_pipeline


protege_pipeline = build(exit_handler=True)
"""The cluster pipeline (`protege compile`, `submit`, `schedule`)."""
local_pipeline = build(exit_handler=False)
"""The same steps for kfp.local (`protege run`)."""
