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
from components.compare import baseline, compare, no_baselines
from components.evaluate import eval as eval_step
from components.register import register
from components.rl import rl1, rl2
from components.sft import sft
from components.synth import synth
from components.verify_tasks import verify_tasks
from protege.config import PipelineConfig
from protege.pipeline.placement import GpuPool, place

PIPELINE = PipelineConfig()
# The standard variants (protege.compare.spec.standard_variants, compare.* defaults) a retraining run measures
# beside its own model (`full`, the eval step) when `compare_baselines` is on.
BASELINES = ["base", "sft", "sft+rl1", "full-no-ask", "expert-alone", "full-forced-k5", "full-random-p0.2"]


def baselines_branch(
    common: dict[str, Any],
    pool: GpuPool,
    run_baselines: Any,
    names: Any,
    base_model: Any,
    eval_tasks: Any,
    expert_model: Any,
    models: dict[str, Any],
    model_results_uri: Any,
) -> Any:
    """With `run_baselines`: each of `names` measured by a parallel `baseline` task, then one `compare` of
    this run's model, the champion and the baselines; else `no-baselines`. Returns the table's URI ('' when
    off) for register, so the gate sees the baselines measured in this run."""
    wired = {
        "eval_tasks": eval_tasks,
        "expert_model": expert_model,
        "kfp_run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER,
    }
    with dsl.If(run_baselines == True, name="baselines"):  # noqa: E712 - a KFP condition, not a comparison
        with dsl.ParallelFor(names, name="baseline-variants") as variant:
            measured = baseline(**common, **wired, variant=variant, base_model=base_model, **models)
            place(measured, "baseline", PIPELINE, pool)
        compared = compare(
            **common,
            **wired,
            model_results_uri=model_results_uri,
            baseline_uris=dsl.Collected(measured.output),
        )
        place(compared, "compare", PIPELINE, pool)
    with dsl.Else(name="no-baselines"):
        skipped = no_baselines().set_display_name("no-baselines").set_caching_options(False)
    return dsl.OneOf(compared.output, skipped.output)


def steps(
    common: dict[str, Any],
    pool: GpuPool,
    base_model: Any,
    train_tasks: Any,
    eval_tasks: Any,
    expert_model: Any,
    run_baselines: Any = None,
    baselines: Any = None,
) -> None:
    """verify -> synth -> sft -> rl1 -> rl2 -> eval -> register, each placed; with `run_baselines` (the
    cluster pipeline) the baselines branch between eval and register."""
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

    comparison: Any = ""
    if run_baselines is not None:
        models = {
            "sft_uri": tuned.outputs["model_uri"],
            "rl1_uri": stage1.outputs["Output"],
            "rl2_uri": stage2.outputs["Output"],
        }
        comparison = baselines_branch(
            common,
            pool,
            run_baselines,
            baselines,
            base_model,
            eval_tasks,
            expert_model,
            models,
            evaluated.outputs["report_uri"],
        )
    registered = register(
        **common,
        comparison_uri=comparison,
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
        compare_baselines: bool = False,
        baselines: list = BASELINES,  # noqa: B006
    ) -> None:
        """Empty `base_model`/`*_tasks`/`expert_model` keep the profile's; `overrides` is a JSON list of
        `dotted.key=value`; the `gpu_*` parameters choose the pool of the GPU steps (sft, rl1, rl2, eval,
        baseline). `compare_baselines` turns on the baselines branch (the cluster pipeline): every variant
        named in `baselines` is measured and compared with this run's model and the champion before register."""
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
        wired |= {"run_baselines": compare_baselines, "baselines": baselines}
        closer = close_run(**common, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        place(closer, "close", PIPELINE, pool)
        with dsl.ExitHandler(closer, name="steps"):
            steps(common, pool, **wired)

    return protege_pipeline


protege_pipeline = build(exit_handler=True)
"""The cluster pipeline (`protege compile`, `submit`, `schedule`)."""
local_pipeline = build(exit_handler=False)
"""The same steps for kfp.local (`protege run`)."""
