"""Task-set verification: every instance's environment must be able to tell a fix from no fix.

For each instance the gold patch is graded (it must resolve) and an empty patch is graded with the
tests still run (the unfixed repository must not resolve: every FAIL_TO_PASS test fails and every
PASS_TO_PASS test passes, the definitions SWE-bench's own validation uses). A broken instance is
reported by id with the reason, so a broken environment never reaches synthesis or RL.

Every instance that can be graded is; one that cannot (its repository is missing, it has no eval
script, its environment asks for a Python this machine lacks) is reported by id with a one-line reason
before grading starts, and never stops the others. Tests that error during collection (a missing
package in `tests/conftest.py`) are reported as the import error itself.

    protege tasks verify demo:all            # one task set
    protege tasks verify --profile local     # that profile's train and eval sets
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protege.config import ProtegeConfig
from protege.environments import EnvironmentBuildError, EnvironmentSpecError, environment_for, user_specs
from protege.grading import GradeJob, GradeResult, GradingError, grade_batch, swebench_spec
from protege.tasks import TaskInstance

VERIFY_REPORT = "verify.json"


class VerifyError(RuntimeError):
    """A task set with broken instances (or none selected); the message names each one."""


# Failure reasons meaning the grading itself did not happen: the run says nothing about the tests.
INFRA_REASONS = ("timeout", "sandbox_error")
GOLD, EMPTY = "gold", "empty"


@dataclass
class InstanceVerdict:
    """Both gradings of one instance and what is wrong with it (nothing when `ok`); no gradings when the
    instance could not be graded at all (`problems` says why)."""

    instance_id: str
    gold: GradeResult | None
    empty: GradeResult | None
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
                    "gold": v.gold and v.gold.to_dict(),
                    "empty": v.empty and v.empty.to_dict(),
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
                f"{_seconds(v.gold):>7} {_seconds(v.empty):>7}  {'ok' if v.ok else 'BROKEN'}"
            )
        rows.append(f"{len(self.verdicts) - len(self.broken)}/{len(self.verdicts)} instance(s) ok")
        for v in self.broken:
            rows.append(f"BROKEN {v.instance_id}:")
            rows.extend(f"  - {problem}" for problem in v.problems)
        return "\n".join(rows)


def _outcome(result: GradeResult | None) -> str:
    if result is None:
        return "not graded"
    return "resolved" if result.resolved else result.failure_reason


def _seconds(result: GradeResult | None) -> str:
    return "-" if result is None else f"{result.duration_s:.1f}"


# pytest's own words for a file it could not import, and the exception line under it ("E   ...Error: ...").
_COLLECTION_FAILURE = re.compile(
    r"ImportError while loading conftest '(?P<conftest>[^']+)'"
    r"|ImportError while importing test module '(?P<module>[^']+)'"
    r"|_ ERROR collecting (?P<file>\S+) _"
)
_EXCEPTION_LINE = re.compile(r"^E\s+(?P<what>[\w.]*(?:Error|Exception)\b.*?)\s*$", re.M)


def collection_error(log: str, workdir: str = "/testbed") -> str | None:
    """'the tests error during collection: <exception> (in <file>)' when pytest could not import a test
    file or conftest, else None."""
    found = _COLLECTION_FAILURE.search(log)
    if found is None:
        return None
    where = next(value for value in found.groupdict().values() if value)
    where = where.removeprefix(workdir.rstrip("/") + "/")
    exception = _EXCEPTION_LINE.search(log, found.end())
    what = exception.group("what") if exception else "see the log"
    return f"the tests error during collection: {what} (in {where})"


def _collection_error_of(result: GradeResult | None, workdir: str) -> str | None:
    if result is None or result.resolved:
        return None
    try:
        text = Path(result.log_path).read_text(errors="replace")
    except OSError:
        return None
    return collection_error(text, workdir)


def verdict_problems(gold: GradeResult, empty: GradeResult, workdir: str = "/testbed") -> list[str]:
    """What is wrong with an instance given both gradings; a collection error stands for all of it."""
    problems = gold_problems(gold) + empty_problems(empty)
    if problems and (why := _collection_error_of(gold, workdir) or _collection_error_of(empty, workdir)):
        return [why]
    return problems


def instance_problem(task: TaskInstance, cfg: ProtegeConfig, repos_dir: str | Path) -> str | None:
    """Why `task` cannot be graded here at all (None: it can). Builds a local environment on first use."""
    if not task.eval_script.strip():
        return "no eval_script: the row has no script that runs its tests (the `eval_script` column is empty)"
    try:
        swebench_spec(task)
    except GradingError as err:
        return str(err).removeprefix(f"{task.instance_id}: ")
    backend = cfg.agent.sandbox.backend
    if backend == "kubernetes":
        return (
            None if task.image else "no `image` to run it in on the kubernetes backend (rows must carry one)"
        )
    if backend == "docker":
        return None  # with_docker_image has built or found its image
    repo = Path(repos_dir) / task.repo_dirname
    if not repo.is_dir():
        return f"repository {task.repo} is missing: no {repo} (tasks.repos_dir is {repos_dir})"
    try:
        environment_for(cfg.agent.sandbox.environments, task, repos_dir)
    except (EnvironmentBuildError, EnvironmentSpecError) as err:
        return str(err)
    return None


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


def with_docker_image(
    task: TaskInstance, cfg: ProtegeConfig, repos_dir: str | Path, broken: dict[str, InstanceVerdict]
) -> TaskInstance:
    """The task with its instance image present in the engine (built from its environment when missing);
    a task whose image cannot be had goes to `broken` with the reason."""
    from protege.docker_engine import EngineError
    from protege.environment_images import ensure_task_image
    from protege.environments import resolve_environment

    try:
        spec = resolve_environment(
            task, Path(repos_dir) / task.repo_dirname, user_specs(cfg.agent.sandbox.environments)
        )
        return ensure_task_image(task, spec, Path(repos_dir))
    except (EngineError, EnvironmentBuildError, EnvironmentSpecError) as err:
        broken[task.instance_id] = InstanceVerdict(task.instance_id, None, None, [str(err)])
        return task


def verify_task_set(
    tasks: Sequence[TaskInstance],
    cfg: ProtegeConfig,
    repos_dir: str | Path,
    workers: int | None = None,
    *,
    run_id: str | None = None,
    logs_dir: str | Path | None = None,
    on_verdict: Callable[[InstanceVerdict], None] | None = None,
    unloadable: Mapping[str, list[str]] | None = None,
) -> VerifyReport:
    """Grade gold and empty patches of every task in parallel (`workers`, default cfg.eval.workers);
    `on_verdict` is called once per instance as soon as both its gradings are in (at once for an instance
    that cannot be graded, see `instance_problem`). `unloadable` (id -> reasons): rows of the task set
    that did not even load, reported as broken instances after the others."""
    started = time.monotonic()
    run_id = run_id or time.strftime("verify-%Y%m%d-%H%M%S")
    verdicts: dict[str, InstanceVerdict] = {}
    if cfg.agent.sandbox.backend == "docker":
        tasks = [with_docker_image(task, cfg, repos_dir, verdicts) for task in tasks]
    for task in tasks:
        if task.instance_id in verdicts:
            if on_verdict:
                on_verdict(verdicts[task.instance_id])
            continue
        if (why := instance_problem(task, cfg, repos_dir)) is not None:
            verdicts[task.instance_id] = InstanceVerdict(task.instance_id, None, None, [why])
            if on_verdict:
                on_verdict(verdicts[task.instance_id])
    gradable = [t for t in tasks if t.instance_id not in verdicts]
    jobs = [GradeJob(t, t.patch, GOLD) for t in gradable] + [
        GradeJob(t, "", EMPTY, run_tests_on_empty=True) for t in gradable
    ]
    done: dict[int, GradeResult] = {}

    def collect(index: int, result: GradeResult) -> None:
        done[index] = result
        task_index = index % len(gradable)
        gold, empty = done.get(task_index), done.get(task_index + len(gradable))
        task = gradable[task_index]
        if gold is not None and empty is not None and task.instance_id not in verdicts:
            verdict = InstanceVerdict(task.instance_id, gold, empty)
            verdict.problems = verdict_problems(gold, empty, cfg.agent.sandbox.workdir)
            verdicts[task.instance_id] = verdict
            if on_verdict:
                on_verdict(verdict)

    if jobs:
        grade_batch(
            jobs, cfg, repos_dir, workers=workers, run_id=run_id, logs_dir=logs_dir, on_result=collect
        )
    refused = [InstanceVerdict(iid, None, None, list(why)) for iid, why in (unloadable or {}).items()]
    for verdict in refused:
        if on_verdict:
            on_verdict(verdict)
    report = VerifyReport([verdicts[t.instance_id] for t in tasks] + refused, time.monotonic() - started)
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
        if cfg.agent.sandbox.backend in ("local", "docker") and source.startswith("demo:"):
            ensure_local_repos(
                tasks, source, repos_dir, error=TaskSetError
            )  # others: one broken instance each
        report = verify_task_set(tasks, cfg, repos_dir, logs_dir=out, run_id=f"verify-{split}")
        # tasks.origin: the split read and, for a hub dataset, the commit; the digest says which rows.
        reports[split] = {
            "source": source,
            "digest": task_set_digest(tasks),
            **tasks.origin.tags(),
            **report.to_dict(),
        }
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
