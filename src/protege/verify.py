"""Task-set verification: every instance's environment must be able to tell a fix from no fix.

For each instance the gold patch is graded (it must resolve) and an empty patch is graded with the
tests still run (the unfixed repository must not resolve: every FAIL_TO_PASS test fails and every
PASS_TO_PASS test passes, the definitions SWE-bench's own validation uses). A broken instance is
reported by id with the reason, so a broken environment never reaches synthesis or RL.

    protege tasks verify demo:all            # one task set
    protege tasks verify --profile local     # that profile's train and eval sets
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protege.config import ProtegeConfig
from protege.grading import GradeJob, GradeResult, grade_batch
from protege.tasks import TaskInstance

VERIFY_REPORT = "verify.json"


class VerifyError(RuntimeError):
    """A task set with broken instances (or none selected); the message names each one."""


# Failure reasons meaning the grading itself did not happen: the run says nothing about the tests.
INFRA_REASONS = ("timeout", "sandbox_error")
GOLD, EMPTY = "gold", "empty"


@dataclass
class InstanceVerdict:
    """Both gradings of one instance and what is wrong with it (nothing when `ok`)."""

    instance_id: str
    gold: GradeResult
    empty: GradeResult
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class VerifyReport:
    """Verdicts in task order."""

    verdicts: list[InstanceVerdict]
    duration_s: float = 0.0

    @property
    def broken(self) -> list[InstanceVerdict]:
        return [v for v in self.verdicts if not v.ok]

    @property
    def ok(self) -> bool:
        return not self.broken

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "instances": len(self.verdicts),
            "broken": {v.instance_id: v.problems for v in self.broken},
            "duration_s": self.duration_s,
            "verdicts": [
                {
                    "instance_id": v.instance_id,
                    "ok": v.ok,
                    "problems": v.problems,
                    "gold": v.gold.to_dict(),
                    "empty": v.empty.to_dict(),
                }
                for v in self.verdicts
            ],
        }

    def table(self) -> str:
        """A fixed-width summary, one row per instance, then the broken ones with their reasons."""
        width = max([len("instance_id")] + [len(v.instance_id) for v in self.verdicts])
        rows = [f"{'instance_id':<{width}}  {'gold':<12} {'empty':<12} {'gold_s':>7} {'empty_s':>7}  verdict"]
        for v in self.verdicts:
            rows.append(
                f"{v.instance_id:<{width}}  {_outcome(v.gold):<12} {_outcome(v.empty):<12} "
                f"{v.gold.duration_s:>7.1f} {v.empty.duration_s:>7.1f}  {'ok' if v.ok else 'BROKEN'}"
            )
        rows.append(f"{len(self.verdicts) - len(self.broken)}/{len(self.verdicts)} instance(s) ok")
        for v in self.broken:
            rows.append(f"BROKEN {v.instance_id}:")
            rows.extend(f"  - {problem}" for problem in v.problems)
        return "\n".join(rows)


def _outcome(result: GradeResult) -> str:
    return "resolved" if result.resolved else result.failure_reason


def _where(test: str, result: GradeResult) -> str:
    """'not found in log' or 'failed (STATUS)' for a test graded as a failure."""
    from swebench.harness.grading import _resolve_case

    key = _resolve_case(test, result.test_statuses)
    return "not found in log" if key is None else f"failed ({result.test_statuses[key]})"


def _failures(result: GradeResult, kind: str) -> list[str]:
    return list((result.tests_status or {}).get(kind, {}).get("failure", []))


def _successes(result: GradeResult, kind: str) -> list[str]:
    return list((result.tests_status or {}).get(kind, {}).get("success", []))


def gold_problems(gold: GradeResult) -> list[str]:
    """Why the gold patch's grading shows a broken instance (empty when it resolves)."""
    if gold.resolved:
        return []
    if gold.failure_reason in ("patch_apply_failed", *INFRA_REASONS):
        return [f"gold patch does not resolve: {gold.failure_reason}: {gold.detail}".rstrip(": ")]
    if gold.tests_status is None:
        return [f"gold patch does not resolve: no test results could be parsed from {gold.log_path}"]
    problems = [
        f"gold patch does not resolve: {kind} test {test} {_where(test, gold)}"
        for kind in ("FAIL_TO_PASS", "PASS_TO_PASS")
        for test in _failures(gold, kind)
    ]
    return problems or ["gold patch does not resolve (swebench reports no failing test)"]


def empty_problems(empty: GradeResult) -> list[str]:
    """Why the no-fix grading shows a broken instance: a FAIL_TO_PASS test that already passes, a
    PASS_TO_PASS test that fails, or a run that never produced results."""
    if empty.failure_reason in INFRA_REASONS:
        return [f"empty patch could not be graded: {empty.failure_reason}: {empty.detail}".rstrip(": ")]
    if empty.tests_status is None:
        return [f"empty patch: no test results could be parsed from {empty.log_path}"]
    problems = []
    if empty.resolved:
        problems.append("empty patch resolves: the tests do not detect a missing fix")
    problems += [
        f"FAIL_TO_PASS test {test} passes without the fix" for test in _successes(empty, "FAIL_TO_PASS")
    ]
    problems += [
        f"PASS_TO_PASS test {test} {_where(test, empty)} without the fix"
        for test in _failures(empty, "PASS_TO_PASS")
    ]
    return problems


def verify_task_set(
    tasks: Sequence[TaskInstance],
    cfg: ProtegeConfig,
    repos_dir: str | Path,
    workers: int | None = None,
    *,
    run_id: str | None = None,
    logs_dir: str | Path | None = None,
    on_verdict: Callable[[InstanceVerdict], None] | None = None,
) -> VerifyReport:
    """Grade gold and empty patches of every task in parallel (`workers`, default cfg.eval.workers);
    `on_verdict` is called once per instance as soon as both its gradings are in."""
    started = time.monotonic()
    run_id = run_id or time.strftime("verify-%Y%m%d-%H%M%S")
    jobs = [GradeJob(t, t.patch, GOLD) for t in tasks] + [
        GradeJob(t, "", EMPTY, run_tests_on_empty=True) for t in tasks
    ]
    done: dict[int, GradeResult] = {}
    verdicts: dict[int, InstanceVerdict] = {}

    def collect(index: int, result: GradeResult) -> None:
        done[index] = result
        task_index = index % len(tasks)
        pair = (done.get(task_index), done.get(task_index + len(tasks)))
        if pair[0] is not None and pair[1] is not None and task_index not in verdicts:
            verdict = InstanceVerdict(tasks[task_index].instance_id, pair[0], pair[1])
            verdict.problems = gold_problems(pair[0]) + empty_problems(pair[1])
            verdicts[task_index] = verdict
            if on_verdict:
                on_verdict(verdict)

    grade_batch(jobs, cfg, repos_dir, workers=workers, run_id=run_id, logs_dir=logs_dir, on_result=collect)
    report = VerifyReport([verdicts[i] for i in range(len(tasks))], time.monotonic() - started)
    out = Path(logs_dir or cfg.eval.grade_logs_dir) / run_id / "verify.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def run(cfg: ProtegeConfig, out: Path, store: Any = None) -> dict[str, str]:
    """Grade gold and empty patches of the profile's train and eval tasks into `out`; VerifyError naming every
    broken one (the pipeline's verify step).

    Returns {"report_uri", "tasks_digest", "eval_set_digest"}: the verify report (uploaded when `store` is
    given, else its local path), a sha256 over both splits' digests (it keys the cache of the steps
    downstream) and the eval split's digest (the champion gate compares Pass@1 only on the same eval set).
    """
    from protege.store import sha256_text
    from protege.tasksets import TaskSetError, ensure_local_repos, select_tasks, task_set_digest

    repos_dir = Path(cfg.tasks.repos_dir)
    selection = select_tasks(cfg.tasks, store=store)
    reports: dict[str, Any] = {}
    for split, source, tasks in (
        ("train", cfg.tasks.train, selection.train),
        ("eval", cfg.tasks.eval, selection.eval),
    ):
        if not tasks:
            raise VerifyError(f"verify: {split} set {source} selects no tasks")
        if cfg.agent.sandbox.backend == "local":
            ensure_local_repos(tasks, source, repos_dir, error=TaskSetError)
        report = verify_task_set(tasks, cfg, repos_dir, logs_dir=out, run_id=f"verify-{split}")
        reports[split] = {"source": source, "digest": task_set_digest(tasks), **report.to_dict()}
    broken = [
        f"{rep['source']}:{iid} ({', '.join(problems)})"
        for rep in reports.values()
        for iid, problems in rep["broken"].items()
    ]
    if broken:
        raise VerifyError("verify: broken task instances: " + "; ".join(broken))
    path = out / VERIFY_REPORT
    path.write_text(json.dumps(reports, indent=2, sort_keys=True) + "\n")
    uri = str(path)
    if store is not None:
        uri = f"s3://{cfg.store.bucket}/{cfg.run_name}/verify/{VERIFY_REPORT}"
        store.upload_file(path, uri)
    digest = sha256_text(json.dumps({split: rep["digest"] for split, rep in reports.items()}, sort_keys=True))
    return {"report_uri": uri, "tasks_digest": digest, "eval_set_digest": reports["eval"]["digest"]}
