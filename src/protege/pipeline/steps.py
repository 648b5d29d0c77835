"""What a KFP step does around its phase's `run`: config from pipeline parameters, store, tracker, outputs.

The components in `components/` are thin (STYLE lesson 2): each imports this module and its phase and
calls `run`. Everything here is plain Python, testable without KFP.

Lineage across steps: large outputs stay in the artifact store; steps pass their `s3://` URIs and sha256
digests as KFP output parameters, and output Dataset/Model artifacts pointing at the same objects
(`publish_artifact`) so the KFP UI lists them. The MLflow parent run of a KFP run is opened by `sft`, the first step
that is never cached (`verify` and `synth` are cached by their inputs, so a parent run opened there would
be shared by every KFP run that reuses their cached outputs); its id travels to the later steps as an
output parameter and re-enters MLflow through `$PROTEGE_PARENT_RUN_ID` (protege.tracking).

`synth` records its work in a top-level run of its own (`<run_name>.synth`, tagged as a step record);
`sft` copies that nested run into the new parent run (`adopt_run`: same name, times, params, metrics,
tags and dataset inputs, plus the source run's id), so every KFP run's parent holds a nested run per
step even when KFP served `synth` from its cache, and the copy says where the work was recorded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protege.config import ConfigError, ProtegeConfig, load_config
from protege.store import sha256_text

TAG_KFP_RUN = "protege.kfp_run_id"
TAG_PIPELINE_VERSION = "protege.pipeline_version"
TAG_SYNTH_RUN = "protege.synth_run_id"
TAG_DATASET_URI = "protege.dataset_uri"
TAG_STEP_RECORD = "protege.step_record"
GIT_COMMIT_ENV = "PROTEGE_GIT_COMMIT"  # set by images/*.Dockerfile from the build argument GIT_COMMIT
SOURCE_ROOT = Path(__file__).resolve().parents[3]


class StepError(RuntimeError):
    """A KFP step cannot go on; the message names the step and the bad input."""


def parse_overrides(text: str) -> list[str]:
    """The pipeline's `overrides` parameter: a JSON list of `dotted.key=value` strings ('' or '[]' = none)."""
    if not text.strip():
        return []
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"overrides: not a JSON list of 'key=value' strings: {err}") from None
    if not isinstance(items, list):
        raise ConfigError(f"overrides: expected a JSON list, got {type(items).__name__}")
    for index, item in enumerate(items):
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"overrides[{index}]: expected 'dotted.key=value', got {item!r}")
    return items


def step_config(profile: str, overrides: str, kfp_run_id: str = "", **dotted: str) -> ProtegeConfig:
    """Profile + the `overrides` JSON list + the step's named parameters (`tasks__train="s3://..."` sets
    `tasks.train`; an empty value keeps the profile's). Named parameters apply last. With `kfp_run_id` and
    `pipeline.scope_to_kfp_run`, the run name becomes `<run_name>-<kfp_run_id>` (see that field)."""
    extra = [f"{key.replace('__', '.')}={value}" for key, value in sorted(dotted.items()) if value]
    cfg = load_config(profile, None, parse_overrides(overrides) + extra)
    if kfp_run_id and cfg.pipeline.scope_to_kfp_run:
        cfg = cfg.model_copy(update={"run_name": f"{cfg.run_name}-{kfp_run_id}"})
    return cfg


def step_configs(
    profile: str, overrides: str, kfp_run_id: str = "", **dotted: str
) -> Callable[[list[str]], ProtegeConfig]:
    """`step_config` with room for more overrides per call: `configs(["agent.step_limit=5"])` is the step's
    config with that override after the `overrides` list (and before the named parameters). Steps that
    evaluate several variants (baseline, compare) make one config per variant this way."""
    base = parse_overrides(overrides)

    def config_for(extra: list[str]) -> ProtegeConfig:
        return step_config(profile, json.dumps(base + extra), kfp_run_id, **dotted)

    return config_for


def work_dir(cfg: ProtegeConfig, phase: str) -> Path:
    """The step's local working directory (resumable: phases continue what they find there)."""
    path = Path(cfg.services.data_dir) / "runs" / cfg.run_name / phase
    path.mkdir(parents=True, exist_ok=True)
    return path


def open_store(cfg: ProtegeConfig) -> Any:
    """The artifact store; credentials come from env (Kubernetes Secrets on clusters, the shell locally)."""
    from protege.store import S3ArtifactStore

    return S3ArtifactStore.from_config(cfg.store)


def attach_tracker(cfg: ProtegeConfig, parent_run_id: str) -> Any:
    """A Tracker re-attached to the KFP run's MLflow parent run `parent_run_id`."""
    from protege.tracking import PARENT_RUN_ENV, Tracker

    if not parent_run_id:
        raise StepError(
            "parent_run_id is empty: this step runs after `sft`, which opens the MLflow parent run"
        )
    os.environ[PARENT_RUN_ENV] = parent_run_id
    tracker = Tracker(cfg.tracking)
    tracker.start_pipeline(cfg.run_name, parent_run_id=parent_run_id)
    return tracker


def open_pipeline_run(cfg: ProtegeConfig, kfp_run_id: str, synth_run_id: str, dataset_uri: str) -> Any:
    """A Tracker with a new MLflow parent run for this KFP run, tagged with its KFP run id and synth inputs."""
    from protege import __version__
    from protege.tracking import PARENT_RUN_ENV, Tracker

    os.environ.pop(PARENT_RUN_ENV, None)  # a stale id from the shell must not hijack this KFP run
    tracker = Tracker(cfg.tracking)
    tags = {
        TAG_KFP_RUN: kfp_run_id,
        TAG_PIPELINE_VERSION: __version__,
        TAG_SYNTH_RUN: synth_run_id,
        TAG_DATASET_URI: dataset_uri,
    }
    tracker.start_pipeline(cfg.run_name, cfg, tags={k: v for k, v in tags.items() if v})
    os.environ[PARENT_RUN_ENV] = str(tracker.parent_run_id)
    if synth_run_id:
        adopt_run(tracker, synth_run_id)
    return tracker


def step_tracker(cfg: ProtegeConfig, step: str) -> Any:
    """A Tracker for a step that runs before the KFP run's parent run exists (synth): it records into a
    top-level run `<run_name>.<step>` of its own, never into a stale `$PROTEGE_PARENT_RUN_ID`."""
    from protege.tracking import PARENT_RUN_ENV, Tracker

    os.environ.pop(PARENT_RUN_ENV, None)
    tracker = Tracker(cfg.tracking)
    tracker.start_pipeline(f"{cfg.run_name}.{step}", cfg, tags={TAG_STEP_RECORD: step})
    return tracker


def adopt_run(tracker: Any, source_run_id: str) -> str:
    """Copy the nested run `source_run_id` (recorded by a step before this pipeline run existed, maybe in
    an earlier KFP run whose output KFP reused from its cache) into `tracker`'s pipeline run
    (protege.tracking.Tracker.adopt_run). Returns the copy's run id."""
    return tracker.adopt_run(source_run_id)


def publish_artifact(artifact: Any, uri: str, **metadata: Any) -> None:
    """Point a step's output artifact (dsl.Output[Model] / [Dataset] / [Artifact]) at the object the step
    already wrote to the artifact store, so the KFP UI lists it at its s3:// URI with its digest or MLflow
    model id, instead of a copy under the pipeline root. Empty metadata values are left out."""
    artifact.uri = uri
    artifact.metadata.update({key: value for key, value in metadata.items() if value not in ("", None)})


def verify(cfg: ProtegeConfig, store: Any = None) -> dict[str, str]:
    """The verify step: protege.verify.run into the step's work dir; a broken instance fails the step."""
    from protege.verify import VerifyError, run

    try:
        return run(cfg, work_dir(cfg, "verify"), store)
    except VerifyError as err:
        raise StepError(str(err)) from None


def git_commit() -> str:
    """The commit of the code that runs: the images' build argument (`$PROTEGE_GIT_COMMIT`) in a container,
    else `git rev-parse HEAD` of this source checkout; '' when neither is known."""
    import subprocess

    baked = os.environ.get(GIT_COMMIT_ENV, "")
    if baked and baked != "unknown":  # the Dockerfiles' default when built without GIT_COMMIT
        return baked
    try:
        found = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=SOURCE_ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return found.stdout.strip() if found.returncode == 0 else ""


def lineage(
    cfg: ProtegeConfig, *, kfp_run_id: str, dataset_digest: str, eval_set_digest: str
) -> dict[str, Any]:
    """The inputs a registered version is traced back to (protege.register.LINEAGE_TAGS keys).

    Images are recorded by digest when their configured reference is pinned (`@sha256:`, as on
    clusters), else by the reference (a tag); a pod cannot read its own image digest without extra RBAC.
    """
    from protege import __version__
    from protege.config import public_dict
    from protege.image_refs import recorded_images

    rewards = {"stage1": public_dict(cfg.rl.stage1), "stage2": public_dict(cfg.rl.stage2)}
    return {
        "kfp_run_id": kfp_run_id,
        "pipeline_version": __version__,
        "git_commit": git_commit(),
        "image_digests": recorded_images(
            {"agent": cfg.pipeline.agent_image, "trainer": cfg.pipeline.trainer_image}
        ),
        "base_model": cfg.model.base,
        "dataset_digests": {"synth": dataset_digest},
        "expert_model": f"{cfg.expert.backend}:{cfg.expert.model}",
        "reward_config_hash": sha256_text(json.dumps(rewards, sort_keys=True)),
        "eval_set_digest": eval_set_digest,
    }


# --------------------------------------------------------------------------------------------------
# Closing the parent run of a failed pipeline run (the exit handler on clusters, protege.pipeline.local locally)
# --------------------------------------------------------------------------------------------------

TAG_FAILED_STEP = "protege.failed_step"
TAG_FAILURE = "protege.failure"
MAX_FAILURE_CHARS = 5000  # MLflow's limit on a tag value is 8000 characters
SUCCEEDED = "SUCCEEDED"
"""PipelineTaskFinalStatus.state of a pipeline run whose every step succeeded."""


def find_pipeline_run(tracker: Any, kfp_run_id: str) -> str:
    """The MLflow parent run `sft` opened for KFP run `kfp_run_id`; '' when there is none (the run failed
    before sft)."""
    found = tracker.runs_tagged(TAG_KFP_RUN, kfp_run_id)
    parents = [run for run in found if "mlflow.parentRunId" not in run.data.tags]
    return parents[0].info.run_id if parents else ""


def fail_pipeline_run(tracker: Any, parent_run_id: str, failure: str = "") -> str:
    """Close the parent run FAILED, tagged with the failing step and `failure`; returns that step.

    Phase runs left RUNNING (a pod killed mid-phase: OOM, deadline, eviction) are closed FAILED too. The
    failing step is the first such run, else the first phase after `synth` (sft opens the parent run)
    with no finished phase run: it failed before recording anything."""
    from protege.tracking import PHASES, TAG_PHASE

    nested = tracker.nested_runs(parent_run_id)
    finished = {run.data.tags.get(TAG_PHASE) for run in nested if run.info.status == "FINISHED"}
    unfinished = [run for run in nested if run.info.status != "FINISHED"]
    for run in unfinished:
        if run.info.status == "RUNNING":
            tracker.end_run(run.info.run_id, "FAILED")
    failed = [run.data.tags.get(TAG_PHASE, run.info.run_name) for run in unfinished]
    step = failed[0] if failed else next((s for s in PHASES[1:] if s not in finished), "")
    tags = {TAG_FAILED_STEP: step or "unknown"} | (
        {TAG_FAILURE: failure[:MAX_FAILURE_CHARS]} if failure else {}
    )
    tracker.set_tags(parent_run_id, tags)
    tracker.flush()
    tracker.end_run(parent_run_id, "FAILED")
    return step


def close_pipeline_run(cfg: ProtegeConfig, kfp_run_id: str, state: str, error: str = "") -> str:
    """The exit handler's work: after a KFP run that did not succeed, its MLflow parent run is closed
    FAILED with the failing step (on success `register` has closed it FINISHED). Returns what was done,
    one line for the step's log."""
    from protege.tracking import Tracker

    if state == SUCCEEDED:
        return f"KFP run {kfp_run_id} succeeded: its MLflow run was closed by register"
    tracker = Tracker(cfg.tracking)
    parent = find_pipeline_run(tracker, kfp_run_id)
    if not parent:
        return f"KFP run {kfp_run_id} ended {state} before sft opened its MLflow run: nothing to close"
    step = fail_pipeline_run(tracker, parent, f"KFP run {kfp_run_id} ended {state}: {error}".strip(": "))
    return f"KFP run {kfp_run_id} ended {state}: MLflow run {parent} closed FAILED at step {step or '?'}"


def rl(
    stage: int,
    profile: str,
    overrides: str,
    train_tasks: str,
    expert_model: str,
    model_uri: str,
    parent_run_id: str,
    kfp_run_id: str,
    model: Any,
) -> str:
    """The rl1/rl2 step (components/rl.py): RL stage `stage` from `model_uri`; publishes the trained model as
    the `model` artifact and returns its s3:// URI."""
    from protege import rl as rl_phase

    cfg = step_config(profile, overrides, kfp_run_id, tasks__train=train_tasks, expert__model=expert_model)
    tracker = attach_tracker(cfg, parent_run_id)
    out = work_dir(cfg, f"rl{stage}")
    result = rl_phase.run(cfg, stage, model_uri, out, tracker=tracker, store=open_store(cfg))
    publish_artifact(
        model, result["model_uri"], mlflow_model_id=result["model_id"], mlflow_pipeline_run_id=parent_run_id
    )
    return result["model_uri"]
