"""Docker grading backend: the batch is handed to the official harness, `swebench.harness.run_evaluation`.

Per (label, empty-or-not) group of jobs we write the instances as a JSONL dataset and the patches as
a predictions file, then run the harness's `run_instances(...)` in a child process whose working
directory is the run's folder (the harness writes `logs/run_evaluation/...` relative to the working
directory, and a thread pool must not `chdir`). Empty patches are graded in the harness's own
`skip_patch` mode, which runs the tests on the unpatched tree. Each instance's `report.json` is then
read back; an instance without one (the harness raised: patch did not apply, tests timed out,
container error) is graded by `get_eval_report` on the harness's own logs.

Every call grades in a fresh `attempt-<n>` folder: the harness returns an existing `report.json` as is,
so a shared folder would hand a later attempt the first attempt's verdict.

The harness's containers are hardened in the child (`harden_harness`): the sandbox's user (not root),
network none, memory and pid limits, a read-only root filesystem with a tmpfs at /tmp and the workdir
on an anonymous volume (initialised from the image), all capabilities dropped, no-new-privileges and
Docker's default seccomp profile. Files the harness copies in are written through exec (`docker cp`
cannot write to a tmpfs), `/eval.sh` lives at `/tmp/eval.sh` (the root is read-only), and containers are
removed with their volume through the API (swebench's cleanup needs the docker CLI and keeps volumes).

    python -m protege.grading.docker SPEC.json     # what the child process runs
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from protege.config import ProtegeConfig
from protege.grading.harness import (
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
    """Run `python -m protege.grading.docker SPEC` in `working_dir` (the harness's log root)."""
    subprocess.run(
        [sys.executable, "-m", "protege.grading.docker", str(spec_path)], cwd=working_dir, check=True
    )


RELOCATED = {"/eval.sh": "/tmp/eval.sh"}
"""Files the harness puts at the (read-only) root, and where they go instead."""


def hardened_container_kwargs(limits: dict[str, Any], workdir: str) -> dict[str, Any]:
    """`containers.create` options every grading container gets (limits: the spec's `container`)."""
    from docker.types import Mount

    memory = f"{limits['memory_mb']}m"
    return {
        "user": limits["user"],
        "network_mode": "none",
        "mem_limit": memory,
        "memswap_limit": memory,
        "pids_limit": limits["pids"],
        "nano_cpus": int(limits["cpus"] * 10**9),
        "read_only": True,
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={limits['tmpfs_mb']}m"},
        "mounts": [Mount(target=workdir, source=None, type="volume")],
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "environment": {"HOME": "/tmp"},
    }


def harden_harness(limits: dict[str, Any]) -> None:
    """Make swebench's run_instance create hardened containers, exec as `limits['user']` and copy files
    through exec (see the module docstring). Patches module globals of swebench.harness.run_evaluation."""
    import docker.errors
    import swebench.harness.run_evaluation as harness
    from swebench.harness.utils import EvaluationError

    from protege.agent.sandbox.docker import WRITE_CHUNK_BYTES, WRITE_FIRST_SCRIPT, WRITE_NEXT_SCRIPT

    options = hardened_container_kwargs(limits, harness.CONTAINER_WORKDIR)
    run_timed = harness.exec_run_with_timeout

    def create_container(test_spec, client, run_id, logger):
        name = f"sweb.eval.{test_spec.instance_id.lower()}.{run_id}"
        try:
            client.containers.get(name).remove(force=True, v=True)
        except docker.errors.NotFound:
            pass
        try:
            container = client.containers.create(
                image=test_spec.image, name=name, command="tail -f /dev/null", detach=True, **options
            )
        except docker.errors.DockerException as err:
            raise EvaluationError(test_spec.instance_id, f"{test_spec.image}: {err}", logger) from err
        logger.info(f"Container for {test_spec.instance_id} created (hardened): {container.id}")
        return container

    def copy_to_container(container, src: Path, dst) -> None:
        target = RELOCATED.get(str(dst), str(dst))
        data = base64.b64encode(Path(src).read_bytes()).decode()
        step = WRITE_CHUNK_BYTES * 4 // 3
        for offset in range(0, max(len(data), 1), step):
            script = WRITE_FIRST_SCRIPT if offset == 0 else WRITE_NEXT_SCRIPT
            result = container.exec_run(
                ["bash", "-c", script, "copy", target, data[offset : offset + step]], user=limits["user"]
            )
            if result.exit_code != 0:
                raise OSError(f"{target}: {result.output.decode(errors='replace').strip()}")

    def exec_run_with_timeout(container, cmd, timeout=60):
        for old, new in RELOCATED.items():
            cmd = cmd.replace(old, new) if isinstance(cmd, str) else cmd
        return run_timed(container, cmd, timeout)

    def cleanup_container(client, container, logger):
        # swebench's shells out to the docker CLI (absent from the agent image) and keeps the volume
        if container is None:
            return
        try:
            container.remove(force=True, v=True)
        except docker.errors.NotFound:
            return
        except docker.errors.DockerException as err:
            logger.error(f"could not remove container {container.name}: {err}")

    harness.CONTAINER_USER = limits["user"]
    harness.cleanup_container = cleanup_container
    harness.create_container = create_container
    harness.copy_to_container = copy_to_container
    harness.exec_run_with_timeout = exec_run_with_timeout


def harness_main(spec_path: Path) -> None:
    """Child-process entry: call swebench's `run_instances` (hardened) with what the spec file says."""
    import resource

    from swebench.harness.run_evaluation import run_instances

    spec = json.loads(spec_path.read_text())
    harden_harness(spec["container"])
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


def container_limits(cfg: ProtegeConfig) -> dict[str, Any]:
    """The sandbox's limits, as the child process's spec carries them."""
    sandbox = cfg.agent.sandbox
    return {
        "user": sandbox.container_user,
        "memory_mb": sandbox.memory_limit_mb,
        "pids": sandbox.max_processes,
        "cpus": sandbox.cpu_limit,
        "tmpfs_mb": sandbox.container_tmpfs_mb,
    }


def _fresh_folder(parent: Path) -> Path:
    """`parent/attempt-<n>` for the first n not taken (mkdir is the claim, so concurrent calls differ)."""
    parent.mkdir(parents=True, exist_ok=True)
    n = len(list(parent.glob("attempt-*"))) + 1
    while True:
        try:
            (parent / f"attempt-{n}").mkdir()
            return parent / f"attempt-{n}"
        except FileExistsError:
            n += 1


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
        "container": container_limits(cfg),
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
    from protege.grading.harness import GradingError, swebench_spec

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
        folder = _fresh_folder(logs_dir / run_id / "docker" / group_run_id)
        group = [jobs[i] for i in indexes]
        harness(_write_group(folder, group_run_id, group, cfg, workers), folder)
        for index, job in zip(indexes, group, strict=True):
            results[index] = _read_back(folder, group_run_id, job, cfg)
    return [r for r in results if r is not None]


if __name__ == "__main__":
    harness_main(Path(sys.argv[1]))
