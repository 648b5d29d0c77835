"""Grading of (task, patch), the way the official SWE-bench harness grades it.

`grade` follows `swebench.harness.run_evaluation.run_instance` step by step, with the instance
container replaced by our `Sandbox` (local bubblewrap, or a Kubernetes pod from `test_spec.image`):

1. a fresh sandbox at base_commit;
2. the patch written to a file and applied with swebench's own `GIT_APPLY_CMDS` in order
   (`git apply`, `--3way`, `--reject`, `patch --fuzz=5`), the tree reset between attempts, then the
   harness's "already applied" reverse check; no command applies -> `patch_apply_failed`;
3. the eval script of `make_test_spec(task.to_swebench())` (it applies the test patch itself and
   records the test command's exit code) run under a wall-clock limit;
4. its output written as `test_output.txt` exactly as the harness writes it, graded by swebench's
   `get_eval_report` with the task's registered log parser.

Where the harness raises instead of grading (patch did not apply, tests timed out) we still write a
`test_output.txt` carrying swebench's own marker (`APPLY_PATCH_FAIL`, `TESTS_TIMEOUT`), so that
`get_eval_report` on our log says what the harness would have said: not applied, not resolved. Every
`GradeResult` is therefore swebench's report for a log on disk, plus our `failure_reason`.

The docker backend hands a batch to the harness itself (`protege.grading.docker`). The one-instance
machinery is `protege.grading.harness`; task-set verification lives in `protege.verify`.

Logs: `<eval.grade_logs_dir>/<run_id>/<label>/<instance_id>/{patch.diff, eval.sh, run_instance.log,
test_output.txt, report.json}`, the layout of swebench's `logs/run_evaluation/<run_id>/<model>/<id>`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from protege.agent.protocols import SandboxError
from protege.config import ProtegeConfig
from protege.grading.harness import (
    LOG_INSTANCE,
    LOG_REPORT,
    LOG_TEST_OUTPUT,
    RESET_TREE_CMD,
    SANDBOX_GRADING_DIR,
    FailureReason,
    GradeJob,
    GradeResult,
    GradingError,
    apply_patch,
    grade_empty_without_tests,
    grade_in_sandbox,
    is_empty_patch,
    job_log_dir,
    prediction_of,
    preload_swebench,
    result_from_log,
    run_eval_script,
    swebench_spec,
    write_report,
)

__all__ = [
    "LOG_INSTANCE",
    "LOG_REPORT",
    "LOG_TEST_OUTPUT",
    "RESET_TREE_CMD",
    "SANDBOX_GRADING_DIR",
    "FailureReason",
    "GradeJob",
    "GradeResult",
    "GradingError",
    "apply_patch",
    "grade_empty_without_tests",
    "grade_in_sandbox",
    "is_empty_patch",
    "job_log_dir",
    "prediction_of",
    "preload_swebench",
    "result_from_log",
    "run_eval_script",
    "swebench_spec",
    "write_report",
    "grade",
    "grade_batch",
]
from protege.tasks import TaskInstance


def _default_opener(cfg: ProtegeConfig) -> Callable[..., Any]:
    """Pods for kubernetes grading (protege.grading.kubernetes), the agent's sandbox otherwise."""
    if cfg.agent.sandbox.backend == "kubernetes":
        from protege.grading.kubernetes import pod_opener

        return pod_opener(cfg)
    from protege.agent.sandbox import open_sandbox

    return open_sandbox


def grade(
    task: TaskInstance,
    patch: str | None,
    cfg: ProtegeConfig,
    repos_dir: str | Path,
    *,
    label: str = "model",
    run_id: str = "grade",
    logs_dir: str | Path | None = None,
    run_tests_on_empty: bool = False,
    open_sandbox: Callable[..., Any] | None = None,
) -> GradeResult:
    """Grade one patch in a fresh sandbox (local bubblewrap or a kubernetes pod; docker goes to the
    swebench harness). Never raises for a sandbox failure (`sandbox_error`) or a hung eval (`timeout`);
    raises GradingError for a task swebench cannot grade."""
    preload_swebench()
    job = GradeJob(task, patch, label, run_tests_on_empty)
    logs = Path(logs_dir or cfg.eval.grade_logs_dir)
    if cfg.agent.sandbox.backend == "docker":
        from protege.grading.docker import grade_batch_docker

        return grade_batch_docker([job], cfg, run_id=run_id, logs_dir=logs, workers=1)[0]
    log_dir = job_log_dir(logs, run_id, job)
    started = time.monotonic()
    if is_empty_patch(patch) and not run_tests_on_empty:
        return grade_empty_without_tests(job, log_dir, started)
    open_sandbox = open_sandbox or _default_opener(cfg)
    try:
        with open_sandbox(cfg.agent.sandbox, task, Path(repos_dir)) as sandbox:
            return grade_in_sandbox(sandbox, job, cfg, log_dir, started)
    except (SandboxError, OSError) as err:  # OSError: a sandbox file operation failed
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / LOG_TEST_OUTPUT
        log_path.write_text(f"sandbox error: {err}\n")
        result = result_from_log(
            task,
            patch,
            log_path,
            label=label,
            hint="sandbox_error",
            detail=str(err),
            duration_s=time.monotonic() - started,
        )
        write_report(result)
        return result


def grade_batch(
    jobs: Sequence[GradeJob],
    cfg: ProtegeConfig,
    repos_dir: str | Path,
    *,
    workers: int | None = None,
    run_id: str = "grade",
    logs_dir: str | Path | None = None,
    on_result: Callable[[int, GradeResult], None] | None = None,
    open_sandbox: Callable[..., Any] | None = None,
) -> list[GradeResult]:
    """Grade many jobs with the configured backend; results in job order. `on_result(index, result)`
    is called in the calling thread as each finishes."""
    preload_swebench()
    backend = cfg.agent.sandbox.backend
    logs = Path(logs_dir or cfg.eval.grade_logs_dir)
    workers = workers or cfg.eval.workers
    if backend == "docker":
        from protege.grading.docker import grade_batch_docker

        results = grade_batch_docker(jobs, cfg, run_id=run_id, logs_dir=logs, workers=workers)
        for index, result in enumerate(results):
            if on_result:
                on_result(index, result)
        return results
    if backend == "kubernetes":
        # one pod per graded instance: never more alive than the cluster cap
        workers = min(workers, cfg.eval.grade_max_pods)
    return _grade_in_pool(jobs, cfg, repos_dir, workers, run_id, logs, on_result, open_sandbox)


def _grade_in_pool(
    jobs: Sequence[GradeJob],
    cfg: ProtegeConfig,
    repos_dir: str | Path,
    workers: int,
    run_id: str,
    logs_dir: Path,
    on_result: Callable[[int, GradeResult], None] | None,
    open_sandbox: Callable[..., Any] | None,
) -> list[GradeResult]:
    results: list[GradeResult | None] = [None] * len(jobs)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grade") as pool:
        futures = {
            pool.submit(
                grade,
                job.task,
                job.patch,
                cfg,
                repos_dir,
                label=job.label,
                run_id=run_id,
                logs_dir=logs_dir,
                run_tests_on_empty=job.run_tests_on_empty,
                open_sandbox=open_sandbox,
            ): index
            for index, job in enumerate(jobs)
        }
        for future in as_completed(futures):
            index = futures[future]
            results[index] = future.result()
            if on_result:
                on_result(index, results[index])
    return [r for r in results if r is not None]
