"""Grading one (task, patch) the way swebench's `run_instance` does, inside any Sandbox, and turning the log
on disk into a GradeResult; shared by every grading backend (see protege.grading for the whole story)."""

from __future__ import annotations

import base64
import json
import shlex
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from protege.agent.protocols import Sandbox, SandboxError
from protege.config import ProtegeConfig
from protege.tasks import TaskInstance

FailureReason = Literal[
    "none", "empty_patch", "patch_apply_failed", "tests_failed", "timeout", "sandbox_error"
]

# Files the grader puts in the sandbox live inside the repository's .git directory: it persists
# between commands in every backend, `git status`/`git clean` never see it, and the tests cannot
# import from it.
SANDBOX_GRADING_DIR = ".git/protege-grading"
# The harness's reset between apply attempts (run_instance, verbatim).
RESET_TREE_CMD = "git checkout -- . ; git clean -fd"
LOG_INSTANCE = "run_instance.log"
LOG_TEST_OUTPUT = "test_output.txt"
LOG_REPORT = "report.json"
# Test logs (with the diff before) up to this size come back in the eval command's own output (under
# every backend's output cap).
INLINE_LOG_BYTES = 32 * 1024
INLINE_LOG_MARK = "=== protege: test output follows ==="
# Files (patch, eval script) up to this size travel inside the command that first needs them (base64 grows
# them by a third; a command, one argument of bubblewrap's, must stay under the kernel's 128 KiB).
INLINE_WRITE_BYTES = 64 * 1024


_IMPORT_LOCK = threading.Lock()


class GradingError(ValueError):
    """A task cannot be graded as given (bad eval script, unknown log parser); names the instance."""


@dataclass
class GradeResult:
    """swebench's per-instance report (`get_eval_report(...)[instance_id]`) plus our own fields."""

    instance_id: str
    patch_is_None: bool
    patch_exists: bool
    patch_successfully_applied: bool
    resolved: bool
    failure_reason: FailureReason
    """`none` when resolved, else why not."""
    log_path: str
    """The graded `test_output.txt`."""
    infra_failure: bool = False
    infra_failure_reason: str | None = None
    """swebench's advisory classification of an unparsable log (absent from its report when None)."""
    tests_status: dict[str, dict[str, list[str]]] | None = None
    """FAIL_TO_PASS / PASS_TO_PASS (and F2F / P2F) success and failure lists; None when no results."""
    test_statuses: dict[str, str] = field(default_factory=dict)
    """Parsed status of every test found in the log (what the log parser returned)."""
    detail: str = ""
    """Human-readable detail of a failure (apply error output, sandbox error, timeout)."""
    duration_s: float = 0.0
    """Wall time of the whole grading, sandbox start included."""

    def to_swebench(self) -> dict[str, Any]:
        """The report dict exactly as `get_eval_report` returns it for this instance."""
        report: dict[str, Any] = {
            "patch_is_None": self.patch_is_None,
            "patch_exists": self.patch_exists,
            "patch_successfully_applied": self.patch_successfully_applied,
            "resolved": self.resolved,
            "infra_failure": self.infra_failure,
        }
        if self.infra_failure_reason is not None:
            report["infra_failure_reason"] = self.infra_failure_reason
        if self.tests_status is not None:
            report["tests_status"] = self.tests_status
        return report

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GradeJob:
    """One (task, patch) to grade. `label` names the log directory (the model, or gold/empty)."""

    task: TaskInstance
    patch: str | None
    label: str = "model"
    run_tests_on_empty: bool = False
    """Run the tests even when the patch is empty (verification: the unfixed repository must fail)."""


def is_empty_patch(patch: str | None) -> bool:
    return patch is None or not patch.strip()


def preload_swebench() -> None:
    """Import the swebench modules grading uses under one lock: swebench's grading <-> log_parsers
    imports are circular, and two threads importing them at once see a half-initialised module."""
    with _IMPORT_LOCK:
        import swebench.harness.grading  # noqa: F401
        import swebench.harness.run_evaluation  # noqa: F401
        import swebench.harness.utils  # noqa: F401


def swebench_spec(task: TaskInstance) -> Any:
    """swebench's TestSpec for the task; a task swebench cannot grade raises GradingError naming it."""
    from swebench.harness.log_parsers import PARSER_REGISTRY
    from swebench.harness.utils import make_test_spec

    if not task.eval_script.strip():
        raise GradingError(f"{task.instance_id}: eval_script is empty; nothing to run the tests with")
    if task.log_parser not in PARSER_REGISTRY:
        raise GradingError(
            f"{task.instance_id}: log_parser '{task.log_parser}' is not in swebench's PARSER_REGISTRY"
        )
    return make_test_spec(task.to_swebench())


def prediction_of(task: TaskInstance, patch: str | None, label: str) -> dict[str, Any]:
    """A SWE-bench prediction row."""
    return {"instance_id": task.instance_id, "model_name_or_path": label, "model_patch": patch}


# --------------------------------------------------------------------------------------------------
# Turning a log on disk into a GradeResult (shared by every backend)
# --------------------------------------------------------------------------------------------------


def result_from_log(
    task: TaskInstance,
    patch: str | None,
    log_path: Path,
    *,
    label: str = "model",
    hint: FailureReason = "none",
    detail: str = "",
    duration_s: float = 0.0,
) -> GradeResult:
    """Grade `log_path` with swebench's `get_eval_report`; `hint` says what went wrong before grading.

    `failure_reason` is `none` when resolved, else the hint (timeout, sandbox_error, patch_apply_failed,
    empty_patch) or `tests_failed`.
    """
    from swebench.harness.grading import get_eval_report, get_logs_eval

    spec = swebench_spec(task)
    report = get_eval_report(
        spec, prediction_of(task, patch, label), str(log_path), include_tests_status=True
    )
    entry = report[task.instance_id]
    statuses, _ = get_logs_eval(spec, str(log_path))
    reason: FailureReason = "none" if entry["resolved"] else (hint if hint != "none" else "tests_failed")
    return GradeResult(
        instance_id=task.instance_id,
        patch_is_None=entry["patch_is_None"],
        patch_exists=entry["patch_exists"],
        patch_successfully_applied=entry["patch_successfully_applied"],
        resolved=entry["resolved"],
        failure_reason=reason,
        log_path=str(log_path),
        infra_failure=entry.get("infra_failure", False),
        infra_failure_reason=entry.get("infra_failure_reason"),
        tests_status=entry.get("tests_status"),
        test_statuses=statuses,
        detail=detail,
        duration_s=duration_s,
    )


def write_report(result: GradeResult) -> None:
    """report.json beside the log, in swebench's `{instance_id: report}` shape plus our fields."""
    path = Path(result.log_path).with_name(LOG_REPORT)
    payload = {result.instance_id: result.to_swebench(), "protege": result.to_dict()}
    path.write_text(json.dumps(payload, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------
# Grading inside a sandbox (local and kubernetes backends)
# --------------------------------------------------------------------------------------------------


def _in_workdir(sandbox: Sandbox, command: str) -> str:
    return f"cd {shlex.quote(sandbox.workdir)} && {command}"


def writing_first(path: str, content: str, inline: bool) -> str:
    """A shell prefix writing content to path (byte-exact, through base64) ahead of the command it
    precedes, so the file costs no sandbox call of its own; "" when not `inline` or when it is over
    INLINE_WRITE_BYTES (a command is one argument, which the kernel caps at 128 KiB)."""
    data = content.encode(errors="surrogateescape")
    if not inline or len(data) > INLINE_WRITE_BYTES:
        return ""
    folder, target = shlex.quote(path.rsplit("/", 1)[0]), shlex.quote(path)
    return f"mkdir -p {folder} && printf %s {base64.b64encode(data).decode()} | base64 -d > {target} && "


def apply_patch(
    sandbox: Sandbox, patch_file: str, timeout: float, log: list[str], write_first: str = ""
) -> bool:
    """swebench's apply sequence (run_instance): each of GIT_APPLY_CMDS on a pristine tree, then the
    reverse check for a chain that left the patch applied while every command exited non-zero.
    `write_first` (`writing_first`) runs ahead of the first attempt."""
    from swebench.harness.constants import APPLY_PATCH_FAIL, APPLY_PATCH_PASS
    from swebench.harness.run_evaluation import GIT_APPLY_CMDS

    result = None
    for attempt, apply_cmd in enumerate(GIT_APPLY_CMDS):
        if attempt:
            # a failed attempt (notably --reject) leaves partial state behind
            sandbox.run(_in_workdir(sandbox, RESET_TREE_CMD), timeout)
        prefix = "" if attempt else write_first
        result = sandbox.run(_in_workdir(sandbox, f"{prefix}{apply_cmd} {shlex.quote(patch_file)}"), timeout)
        if result.exit_code == 0:
            log.append(f"{APPLY_PATCH_PASS}:\n{result.output}")
            return True
        log.append(f"Failed to apply patch to container: {apply_cmd}")
    reverse = sandbox.run(
        _in_workdir(sandbox, f"git apply --check --reverse {shlex.quote(patch_file)}"), timeout
    )
    if reverse.exit_code == 0:
        log.append(f"{APPLY_PATCH_PASS}: verified already applied")
        return True
    log.append(f"{APPLY_PATCH_FAIL}:\n{result.output if result else ''}")
    return False


def run_eval_script(sandbox: Sandbox, eval_script: str, timeout: float) -> tuple[str, bool]:
    """Run the eval script; return (its interleaved stdout+stderr, timed_out)."""
    _, output, timed_out = diff_and_eval(sandbox, eval_script, timeout)
    return output, timed_out


def diff_and_eval(
    sandbox: Sandbox, eval_script: str, timeout: float, inline_write: bool = False
) -> tuple[str, str, bool]:
    """The harness's "git diff before", then the eval script: (the diff, the eval output, timed_out).

    Both go to files in the sandbox rather than through `run`'s captured output, which the sandbox
    truncates for the agent; a grading log must be whole. One command runs both and prints the two files
    back when together they are under INLINE_LOG_BYTES (sandbox calls are the grading's overhead over the
    tests themselves); larger ones, or output that is not valid UTF-8 (`run` decodes lossily), are read
    back byte-exact with `read_file`.
    """
    folder = f"{sandbox.workdir}/{SANDBOX_GRADING_DIR}"
    script = f"{folder}/eval.sh"
    before, output = (shlex.quote(f"{folder}/{name}") for name in ("diff_before.txt", LOG_TEST_OUTPUT))
    write_first = writing_first(script, eval_script, inline_write)
    if not write_first:
        sandbox.write_file(script, eval_script)
    result = sandbox.run(
        f"{write_first}(cd {shlex.quote(sandbox.workdir)} && git -c core.fileMode=false diff) > {before} 2>&1; "
        f"/bin/bash {shlex.quote(script)} > {output} 2>&1; "
        f'if [ "$(cat {before} {output} | wc -c)" -le {INLINE_LOG_BYTES} ]; then '
        f"echo {INLINE_LOG_MARK}; cat {before}; echo; echo {INLINE_LOG_MARK}; cat {output}; fi",
        timeout,
    )
    head, mark, inline = result.output.partition(INLINE_LOG_MARK + "\n")
    diff, mark_two, text = inline.partition("\n" + INLINE_LOG_MARK + "\n")
    if mark and mark_two and not head and not result.truncated and "\ufffd" not in inline:
        return diff, text, result.timed_out
    try:
        diff = sandbox.read_file(f"{folder}/diff_before.txt")
        text = sandbox.read_file(f"{folder}/{LOG_TEST_OUTPUT}")
    except (OSError, SandboxError):
        text = result.output
    return diff, text, result.timed_out


def _patch_and_test(
    sandbox: Sandbox, job: GradeJob, eval_script: str, cfg: ProtegeConfig, instance_log: list[str]
) -> tuple[str, FailureReason, str]:
    """run_instance's body: apply the patch, run the eval script. Returns (test_output, hint, detail)."""
    from swebench.harness.constants import TESTS_TIMEOUT

    command_timeout = cfg.agent.sandbox.command_timeout_s
    # locally a command is an argument of bubblewrap's; a pod's travels in a URL: only inline writes here
    inline = cfg.agent.sandbox.backend == "local"
    hint: FailureReason = "none"  # the grading directory is made by the first write
    if is_empty_patch(job.patch):
        # the harness's skip_patch mode: the tests run on the unpatched tree
        hint = "empty_patch"
        instance_log.append(f"Skipping model patch for {job.task.instance_id} (empty patch)")
    else:
        patch_file = f"{sandbox.workdir}/{SANDBOX_GRADING_DIR}/patch.diff"
        write_first = writing_first(patch_file, job.patch or "", inline)
        if not write_first:
            sandbox.write_file(patch_file, job.patch or "")
        if not apply_patch(sandbox, patch_file, command_timeout, instance_log, write_first):
            return instance_log[-1] + "\n", "patch_apply_failed", instance_log[-1]
    limit = cfg.eval.grade_timeout_s
    before, output, timed_out = diff_and_eval(sandbox, eval_script, limit, inline)
    instance_log.append(f"Git diff before:\n{before.strip()}")
    if timed_out:
        # the harness appends this line and refuses to grade; TESTS_TIMEOUT makes get_eval_report
        # refuse too, whatever partial output came before
        output += f"\n\nTimeout error: {limit:g} seconds exceeded.\n{TESTS_TIMEOUT}\n"
        return output, "timeout", f"eval script exceeded {limit:g} s"
    return output, hint, ""


def grade_in_sandbox(
    sandbox: Sandbox, job: GradeJob, cfg: ProtegeConfig, log_dir: Path, started: float | None = None
) -> GradeResult:
    """Grade one job in an opened, fresh sandbox; write every log to `log_dir`."""
    started = time.monotonic() if started is None else started
    if is_empty_patch(job.patch) and not job.run_tests_on_empty:
        return grade_empty_without_tests(job, log_dir, started)
    spec = swebench_spec(job.task)
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "patch.diff").write_text(job.patch or "")
    (log_dir / "eval.sh").write_text(spec.eval_script)
    instance_log: list[str] = []
    try:
        output, hint, detail = _patch_and_test(sandbox, job, spec.eval_script, cfg, instance_log)
    except (SandboxError, OSError) as err:  # OSError: a sandbox file operation failed
        output, hint, detail = f"sandbox error: {err}\n", "sandbox_error", str(err)
    (log_dir / LOG_INSTANCE).write_text("\n".join(instance_log) + "\n")
    test_output_path = log_dir / LOG_TEST_OUTPUT
    test_output_path.write_text(output)
    result = result_from_log(
        job.task,
        job.patch,
        test_output_path,
        label=job.label,
        hint=hint,
        detail=detail,
        duration_s=time.monotonic() - started,
    )
    write_report(result)
    return result


def grade_empty_without_tests(job: GradeJob, log_dir: Path, started: float) -> GradeResult:
    """An empty patch graded without running anything: git apply rejects an empty diff and the
    harness skips such predictions (its `empty_patch`); the log says so with APPLY_PATCH_FAIL."""
    from swebench.harness.constants import APPLY_PATCH_FAIL

    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / LOG_TEST_OUTPUT
    log_path.write_text(f"{APPLY_PATCH_FAIL}:\nempty patch: nothing to apply\n")
    result = result_from_log(
        job.task,
        job.patch,
        log_path,
        label=job.label,
        hint="empty_patch",
        detail="empty patch",
        duration_s=time.monotonic() - started,
    )
    write_report(result)
    return result


def job_log_dir(logs_dir: Path, run_id: str, job: GradeJob) -> Path:
    return logs_dir / run_id / job.label.replace("/", "__") / job.task.instance_id
