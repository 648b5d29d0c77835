"""Per-step Kubernetes placement of the KFP pipeline, in one place (STYLE lesson 3).

`place(task, step, cfg, pool)` gives a step its resources, its GPU pool (accelerator type and count, node
selector, tolerations: pipeline parameters, so one compiled pipeline serves every pool), its secrets as
env vars (kfp-kubernetes `use_secret_as_env`), caching, retries and timeout. Which step gets what is the
literal tables below. Locally (`kfp.local`) the Kubernetes settings are ignored and components read
credentials from the environment, which is why secrets map onto the env names config.py already reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protege.config import PipelineConfig
from protege.launch import S3_SECRET_KEYS

STEPS = ("verify", "synth", "sft", "rl1", "rl2", "eval", "baseline", "compare", "register", "close")
"""The pipeline's steps in order; `close` is its exit handler (components/close_run); `baseline` and
`compare` form the optional baselines branch (components/compare)."""
# eval serves the model it evaluates (protege.evaluate.serving), so it runs on the GPU pool too, and so does a baseline.
GPU_STEPS = frozenset({"sft", "rl1", "rl2", "eval", "baseline"})
# verify and synth are pure functions of their inputs (task sets, config, expert): safe to reuse.
CACHED_STEPS = frozenset({"verify", "synth"})
# Steps that talk to sandboxes or the expert, where a retry can succeed after a transient failure.
RETRIED_STEPS = frozenset({"verify", "synth", "rl1", "rl2", "eval", "baseline"})

# Secret (a PipelineConfig field naming it) -> {key in the Secret: env var the code reads}.
SECRET_ENV: dict[str, dict[str, str]] = {
    "anthropic_secret": {"api_key": "ANTHROPIC_API_KEY"},
    "s3_secret": S3_SECRET_KEYS,
    "mlflow_secret": {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"},
}
# MLflow servers without auth have no such Secret: a missing one must not block the pod.
OPTIONAL_SECRETS = frozenset({"mlflow_secret"})
STEP_SECRETS: dict[str, tuple[str, ...]] = {
    "verify": ("s3_secret",),
    "synth": ("anthropic_secret", "s3_secret", "mlflow_secret"),
    "sft": ("s3_secret", "mlflow_secret"),
    "rl1": ("anthropic_secret", "s3_secret", "mlflow_secret"),
    "rl2": ("anthropic_secret", "s3_secret", "mlflow_secret"),
    "eval": ("anthropic_secret", "s3_secret", "mlflow_secret"),
    "baseline": ("anthropic_secret", "s3_secret", "mlflow_secret"),
    "compare": ("s3_secret", "mlflow_secret"),
    "register": ("s3_secret", "mlflow_secret"),
    "close": ("mlflow_secret",),
}


class PlacementError(ValueError):
    """A step name or a step's settings are unknown."""


@dataclass(frozen=True)
class GpuPool:
    """Where GPU steps run; each field is usually a pipeline parameter (a KFP PipelineChannel)."""

    accelerator: Any
    """Accelerator resource type, e.g. `nvidia.com/gpu`."""
    count: Any
    """Accelerators per GPU step."""
    node_selector: Any
    """Node selector as a dict (JSON object), e.g. {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}."""
    tolerations: Any
    """Tolerations as a list of Kubernetes toleration dicts."""


def _expose_to_groups(task: Any, *values: Any) -> None:
    """Make the pipeline parameters behind a task's accelerator settings reach it through enclosing
    groups (the exit handler): kfp's compiler passes a group only the channels of its tasks' arguments,
    so an accelerator type/count parameter would otherwise name an input the group does not have."""
    from kfp.dsl import pipeline_channel

    for value in values:
        # By identity: `==` on a channel builds a KFP condition, it does not compare.
        known = any(value is channel for channel in task.channel_inputs)
        if isinstance(value, pipeline_channel.PipelineChannel) and not known:
            task.channel_inputs.append(value)


def place(task: Any, step: str, cfg: PipelineConfig, pool: GpuPool) -> Any:
    """Apply resources, GPU pool, secrets, caching, retries and timeout of `step` to the KFP `task`."""
    from kfp import kubernetes

    if step not in STEPS:
        raise PlacementError(f"unknown step '{step}' (steps: {', '.join(STEPS)})")
    if step not in cfg.timeouts_s:
        raise PlacementError(f"pipeline.timeouts_s has no entry for step '{step}'")
    task.set_display_name(step)
    if step in GPU_STEPS:
        task.set_cpu_request(cfg.gpu_step_cpu).set_memory_request(cfg.gpu_step_memory)
        task.set_accelerator_type(pool.accelerator).set_accelerator_limit(pool.count)
        _expose_to_groups(task, pool.accelerator, pool.count)
        kubernetes.add_node_selector_json(task, pool.node_selector)
        kubernetes.add_toleration_json(task, pool.tolerations)
    else:
        task.set_cpu_request(cfg.cpu_step_cpu).set_memory_request(cfg.cpu_step_memory)
    for field in STEP_SECRETS[step]:
        kubernetes.use_secret_as_env(
            task, getattr(cfg, field), SECRET_ENV[field], optional=field in OPTIONAL_SECRETS
        )
    task.set_caching_options(step in CACHED_STEPS)
    if step in RETRIED_STEPS and cfg.retries:
        task.set_retry(cfg.retries, backoff_duration=cfg.retry_backoff, backoff_factor=2.0)
    kubernetes.set_timeout(task, cfg.timeouts_s[step])
    return task
