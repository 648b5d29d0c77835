"""Docker grading backend: the batch is handed to the official harness, `swebench.harness.run_evaluation`.

Per (label, empty-or-not) group of jobs we write the instances as a JSONL dataset and the patches as
a predictions file, then run the harness's `run_instances(...)` in a child process whose working
directory is the run's folder (the harness writes `logs/run_evaluation/...` relative to the working
directory, and a thread pool must not `chdir`). Empty patches are graded in the harness's own
`skip_patch` mode, which runs the tests on the unpatched tree. Each instance's `report.json` is then
read back; an instance without one (the harness raised: patch did not apply, tests timed out,
container error) is graded by `get_eval_report` on the harness's own logs.

    python -m protege.grading_docker SPEC.json     # what the child process runs
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from protege.config import ProtegeConfig
from protege.grading import (
    LOG_INSTANCE,
    LOG_REPORT,
    LOG_TEST_OUTPUT,
    FailureReason,
    GradeJob,
    GradeResult,
    grade_empty_without_tests,
    is_empty_patch,
    job_log_dir,
    result_from_log,
)

# The harness sets this open-file limit in `main`; the child sets it too (one docker socket per worker).
OPEN_FILE_LIMIT = 4096
Harness = Callable[[Path, Path], None]
"""(spec_path, working_dir) -> None: runs the harness on one spec file."""


def docker_reachable(client_factory: Callable[[], Any] | None = None) -> bool:
    """True when a Docker daemon answers a ping."""
    try:
        if client_factory is None:
            import docker

            client_factory = docker.from_env
        return bool(client_factory().ping())
    except Exception:  # docker raises DockerException, requests errors, FileNotFoundError ...
        return False


def run_harness_subprocess(spec_path: Path, working_dir: Path) -> None:
    """Run `python -m protege.grading_docker SPEC` in `working_dir` (the harness's log root)."""
    subprocess.run(
        [sys.executable, "-m", "protege.grading_docker", str(spec_path)], cwd=working_dir, check=True
    )


def harness_main(spec_path: Path) -> None:
    """Child-process entry: call swebench's `run_instances` with what the spec file says."""
    import resource

    from swebench.harness.run_evaluation import run_instances

    spec = json.loads(spec_path.read_text())
    instances = [json.loads(line) for line in Path(spec["instances_path"]).read_text().splitlines() if line]
    predictions = {}
    for line in Path(spec["predictions_path"]).read_text().splitlines():
        if line:
            row = json.loads(line)
            predictions[row["instance_id"]] = row
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILE_LIMIT, OPEN_FILE_LIMIT))
    run_instances(
        predictions,
        instances,
        spec["max_workers"],
        spec["run_id"],
        spec["timeout"],
        rewrite_reports=False,
        skip_patch=spec["skip_patch"],
    )


def _write_group(folder: Path, run_id: str, jobs: list[GradeJob], cfg: ProtegeConfig, workers: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    instances = folder / "instances.jsonl"
    predictions = folder / "predictions.jsonl"
    instances.write_text("".join(json.dumps(j.task.to_swebench()) + "\n" for j in jobs))
    predictions.write_text(
        "".join(
            json.dumps(
                {
                    "instance_id": j.task.instance_id,
                    "model_name_or_path": j.label,
                    "model_patch": j.patch or "",
                }
            )
            + "\n"
            for j in jobs
        )
    )
    spec = {
        "instances_path": str(instances.resolve()),
        "predictions_path": str(predictions.resolve()),
        "max_workers": workers,
        "run_id": run_id,
        "timeout": int(cfg.eval.grade_timeout_s),
        "skip_patch": is_empty_patch(jobs[0].patch),
    }
    spec_path = folder / "harness_spec.json"
    spec_path.write_text(json.dumps(spec, indent=2) + "\n")
    return spec_path


def _harness_dir(folder: Path, run_id: str, job: GradeJob) -> Path:
    from swebench.harness.constants import RUN_EVALUATION_LOG_DIR

    return folder / RUN_EVALUATION_LOG_DIR / run_id / job.label.replace("/", "__") / job.task.instance_id


def _read_back(folder: Path, run_id: str, job: GradeJob, cfg: ProtegeConfig) -> GradeResult:
    """The harness's verdict for one job, as a GradeResult."""
    from swebench.harness.constants import APPLY_PATCH_FAIL

    where = _harness_dir(folder, run_id, job)
    test_output, instance_log = where / LOG_TEST_OUTPUT, where / LOG_INSTANCE
    hint: FailureReason = "empty_patch" if is_empty_patch(job.patch) else "none"
    detail = ""
    if (where / LOG_REPORT).is_file():
        log = test_output
    elif test_output.is_file() and "Timeout error:" in test_output.read_text(errors="replace"):
        log, hint, detail = test_output, "timeout", f"eval script exceeded {cfg.eval.grade_timeout_s:g} s"
    elif instance_log.is_file() and APPLY_PATCH_FAIL in instance_log.read_text(errors="replace"):
        # the harness logs the apply failure with swebench's marker, so get_eval_report agrees
        log, hint, detail = instance_log, "patch_apply_failed", "no GIT_APPLY_CMDS command applied the patch"
    else:
        where.mkdir(parents=True, exist_ok=True)
        log, hint = where / "harness_error.txt", "sandbox_error"
        detail = f"the harness produced no report (see {instance_log})"
        log.write_text(detail + "\n")
    result = result_from_log(job.task, job.patch, log, label=job.label, hint=hint, detail=detail)
    if hint == "timeout":
        result.resolved, result.failure_reason = False, "timeout"
    return result


def grade_batch_docker(
    jobs: Sequence[GradeJob],
    cfg: ProtegeConfig,
    *,
    run_id: str,
    logs_dir: Path,
    workers: int,
    harness: Harness = run_harness_subprocess,
    client_factory: Callable[[], Any] | None = None,
) -> list[GradeResult]:
    """Grade `jobs` with the swebench harness on the local Docker daemon; results in job order."""
    from protege.grading import GradingError, swebench_spec

    for job in jobs:
        swebench_spec(job.task)  # a bad instance fails here, named, before any container starts
    if not docker_reachable(client_factory):
        raise GradingError(
            "sandbox.backend is 'docker' but no Docker daemon answers (docker.from_env().ping())"
        )
    results: list[GradeResult | None] = [None] * len(jobs)
    groups: dict[tuple[str, bool], list[int]] = {}
    for index, job in enumerate(jobs):
        if is_empty_patch(job.patch) and not job.run_tests_on_empty:
            results[index] = grade_empty_without_tests(
                job, job_log_dir(logs_dir, run_id, job), time.monotonic()
            )
        else:
            groups.setdefault((job.label, is_empty_patch(job.patch)), []).append(index)
    for (label, empty), indexes in groups.items():
        group_run_id = f"{run_id}.{label.replace('/', '__')}{'.empty' if empty else ''}"
        folder = logs_dir / run_id / "docker" / group_run_id
        group = [jobs[i] for i in indexes]
        harness(_write_group(folder, group_run_id, group, cfg, workers), folder)
        for index, job in zip(indexes, group, strict=True):
            results[index] = _read_back(folder, group_run_id, job, cfg)
    return [r for r in results if r is not None]


if __name__ == "__main__":
    harness_main(Path(sys.argv[1]))
