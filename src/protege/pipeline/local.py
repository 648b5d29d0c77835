"""`protege run --profile local`: the whole Kubeflow pipeline on this machine, through `kfp.local`.

The pipeline function of this checkout (`pipelines/protege_pipeline.py`, the one `protege compile` and
`protege submit` compile) runs under `kfp.local.SubprocessRunner(use_venv=False)`: each step is a
subprocess of this venv, in the method's order verify-tasks -> synth -> sft -> rl1 -> rl2 -> eval ->
register, its logs streamed as it runs. Kubernetes placement (GPU pool, Secrets, retries) has no effect
locally; the steps read endpoints and credentials from the overrides and the environment, as on a cluster.

- It first checks that the artifact store and the MLflow server answer (`protege services up`).
- Each run gets its own `run_name` (`<run_name>-<UTC time>`, or `--run-name`), so its work directories
  (`<data_dir>/runs/<run_name>/`), artifacts (`s3://<bucket>/<run_name>/`) and MLflow runs never mix
  with an earlier run's: the phases resume whatever they find under their run name.
- Retry policies are cleared for the local run (`without_retries`): a failed step fails the run at
  once, and `protege run --run-name <the same name>` resumes it.
- At the end it prints a table (step, status, wall time, key figures), the URL of the MLflow parent
  run, the registered model version and alias, and the `protege lineage` command that traces it.
  Status and wall time per step come from kfp.local's task log records; figures from the steps'
  outputs (kfp.local writes `<pipeline_root>/<pipeline run>/<task>/executor_output.json`) and from the
  nested MLflow runs of the parent run (protege.pipeline.summary builds and renders the table).

    make demo     # = make setup && protege services up && protege run --profile local
    protege run --profile local sft.max_steps=2 --param base_model=tiny
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protege.config import ProtegeConfig, flatten
from protege.pipeline.summary import TASKS, Summary, gather, summarize

PIPELINE_PARAMS = ("base_model", "train_tasks", "eval_tasks", "expert_model")
"""Pipeline parameters `--param` may set (profile and overrides have their own flags; the gpu_* ones
have no effect locally)."""
PIPELINE_ROOT = "kfp-local"
"""kfp.local's pipeline root, under services.data_dir."""
STEP_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
"""Environment defaults every step subprocess inherits (no telemetry, no model downloads)."""
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"^Executing task '?(?P<task>[^'\s]+)'?$")
_FINISHED = re.compile(r"^Task '?(?P<task>[^'\s]+)'? finished with status (?P<status>\w+)$")
# kfp.local warns once per task that the images are not Python images and that Kubernetes settings are
# ignored: both are expected for a local run of the cluster pipeline.
_EXPECTED_WARNINGS = (
    "You may be attemping to run a task that uses custom",
    ".* have no effect in the current",
)


class RunError(ValueError):
    """`protege run` cannot start (services down, a bad --param); the message names what and why."""


# --------------------------------------------------------------------------------------------------
# Before the run: services, arguments
# --------------------------------------------------------------------------------------------------


def service_problems(cfg: ProtegeConfig) -> list[str]:
    """What is wrong with the artifact store and the MLflow server the steps will use ([] = both answer)."""
    from protege.services import mlflow_problem, s3_problem

    timeout = cfg.services.health_timeout_s
    problems = []
    if problem := s3_problem(cfg.store, timeout):
        problems.append(f"artifact store {cfg.store.endpoint}: {problem}")
    if cfg.tracking.uri.startswith(("http://", "https://")) and (
        problem := mlflow_problem(cfg.tracking.uri, timeout)
    ):
        problems.append(f"MLflow {cfg.tracking.uri}: {problem}")
    return problems


def check_services(cfg: ProtegeConfig) -> None:
    """RunError naming every service that does not answer, and how to start them."""
    problems = service_problems(cfg)
    if problems:
        lines = "\n".join(f"  - {problem}" for problem in problems)
        raise RunError(
            f"the local services are not up:\n{lines}\n"
            "start them with `protege services up` (or `make services-up`), then run again"
        )


def parse_params(items: list[str]) -> dict[str, str]:
    """`--param key=value` items -> pipeline arguments; an unknown key or a missing '=' is named."""
    params: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise RunError(f"--param '{item}': expected key=value")
        if key not in PIPELINE_PARAMS:
            raise RunError(
                f"--param '{item}': unknown parameter '{key}' (known: {', '.join(PIPELINE_PARAMS)})"
            )
        params[key] = value
    return params


def file_overrides(config_file: str | None) -> list[str]:
    """A `--config` YAML as dotted overrides: the steps rebuild their config from profile + overrides."""
    if not config_file:
        return []
    from protege.config import _read_yaml

    return [f"{key}={json.dumps(value)}" for key, value in flatten(_read_yaml(Path(config_file))).items()]


def pipeline_arguments(
    profile: str, overrides: list[str], run_name: str, params: dict[str, str]
) -> dict[str, Any]:
    """The pipeline's arguments: the profile, the overrides (with this run's run_name last) and --params."""
    return {"profile": profile, "overrides": json.dumps([*overrides, f"run_name={run_name}"]), **params}


# --------------------------------------------------------------------------------------------------
# The run: kfp.local with a clock on its task records
# --------------------------------------------------------------------------------------------------


class TaskClock(logging.Filter):
    """Start, end and status of each kfp.local task, read from the records kfp.local logs through the
    root logger (`Executing task X`, `Task X finished with status S`). Never drops a record."""

    def __init__(self) -> None:
        super().__init__()
        self.started: dict[str, float] = {}
        self.finished: dict[str, tuple[float, str]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        message = _ANSI.sub("", record.getMessage()).strip()
        if match := _STARTED.match(message):
            self.started[match["task"]] = record.created
        elif match := _FINISHED.match(message):
            self.finished[match["task"]] = (record.created, match["status"])
        return True

    def step(self, task: str) -> tuple[str, float | None]:
        """(status, wall seconds): SUCCESS/FAILURE with its time, `running` if it never finished, else
        `not run`."""
        if task in self.finished:
            end, status = self.finished[task]
            return status, end - self.started.get(task, end)
        return ("running", None) if task in self.started else ("not run", None)


@dataclass
class LocalRun:
    """What one kfp.local pipeline run left: its directory under the pipeline root and its task clock."""

    run_dir: Path | None
    clock: TaskClock
    seconds: float
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return all(self.clock.step(task)[0] == "SUCCESS" for task in TASKS)


def task_outputs(run_dir: Path | None, task: str) -> dict[str, Any]:
    """A finished task's output parameters ({} when it did not finish)."""
    path = run_dir / task / "executor_output.json" if run_dir else None
    if path is None or not path.is_file():
        return {}
    return dict(json.loads(path.read_text()).get("parameterValues", {}))


@contextmanager
def without_retries(pipeline: Any) -> Iterator[Any]:
    """The pipeline with its tasks' retry policies cleared while the block runs, restored after (the
    pipeline object is the imported module's: `protege compile` in the same process must see them). kfp.local
    honours them, and the cluster's backoff (minutes, for flaky sandboxes and expert APIs) would turn a local,
    deterministic failure into minutes of waiting; a failed local run resumes with the same --run-name."""
    tasks = pipeline.pipeline_spec.root.dag.tasks
    saved = {
        name: task.retry_policy.SerializeToString()
        for name, task in tasks.items()
        if task.HasField("retry_policy")
    }
    for task in tasks.values():
        task.ClearField("retry_policy")
    try:
        yield pipeline
    finally:
        for name, blob in saved.items():
            tasks[name].retry_policy.ParseFromString(blob)


def run_pipeline(arguments: dict[str, Any], pipeline_root: Path) -> LocalRun:
    """Run the pipeline of this checkout under kfp.local with `arguments`; a failed task does not raise
    (the summary shows it)."""
    from kfp import local

    from protege.pipeline.compile import load_pipeline

    pipeline = load_pipeline("local_pipeline")
    pipeline_root.mkdir(parents=True, exist_ok=True)
    before = set(pipeline_root.iterdir())
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), raise_on_error=False
    )
    for key, value in STEP_ENV.items():
        os.environ.setdefault(key, value)
    # A parent run id left in the shell must not capture the steps (sft opens this run's parent run).
    os.environ.pop("PROTEGE_PARENT_RUN_ID", None)
    clock, root = TaskClock(), logging.getLogger()
    root.addFilter(clock)
    started = time.monotonic()
    try:
        with warnings.catch_warnings():
            for pattern in _EXPECTED_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)
            with without_retries(pipeline):
                pipeline(**arguments)
    finally:
        root.removeFilter(clock)
    created = sorted(set(pipeline_root.iterdir()) - before, key=lambda p: p.stat().st_mtime)
    run = LocalRun(created[-1] if created else None, clock, time.monotonic() - started)
    run.outputs = {task: task_outputs(run.run_dir, task) for task in TASKS}
    return run


def fail_parent_run(cfg: ProtegeConfig, parent_run_id: str, failure: str = "") -> str:
    """Close the MLflow parent run as FAILED, tagged with the failing step, after a failed run (on
    success `register` closes it): what the cluster pipeline's exit handler does. Returns that step."""
    if not parent_run_id:
        return ""
    from protege.pipeline.steps import attach_tracker, fail_pipeline_run

    return fail_pipeline_run(attach_tracker(cfg, parent_run_id), parent_run_id, failure)


def collect(cfg: ProtegeConfig, run: LocalRun) -> Summary:
    facts, url, notes = gather(cfg, run.outputs)
    summary = summarize(cfg, run.clock.step, facts, run.seconds)
    summary.mlflow_url, summary.notes = url, notes
    return summary
