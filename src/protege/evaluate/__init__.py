"""Phase eval (METHOD §7): run the agent (policy + expert) on the evaluation tasks, grade every patch
the way SWE-bench does, and report the method's figures.

    protege eval --profile local --model .protege/models/rl2 [--expert anthropic:claude-sonnet-4-5]
    protege report .protege/runs/eval            # re-render report.json / report.md from stored results

For each (task, attempt) not yet graded, `cfg.eval.workers` threads run one episode each and grade
its patch in a fresh sandbox (`protege.grading.grade`). Results are appended as they come, so a run
can stop at any point and resume: `predictions.jsonl` (SWE-bench format; attempt k >= 1 goes to
`predictions.attempt-k.jsonl` because SWE-bench keys predictions by instance id),
`trajectories.jsonl` and `grades.jsonl`. A re-run skips every graded pair, re-grades (without
re-running) an episode whose trajectory was written but whose grading was not, and plays again the pairs
that failed on infrastructure (an outage is not their score).

Infrastructure failures are not scores: above `eval.max_infra_failure_share` of such episodes the phase
raises InfraFailure (one line: counts, limit, first reason) instead of reporting a Pass@1.

A pair that runs past `cfg.eval.instance_timeout_s` is recorded as `timeout` and abandoned (its thread
is a daemon and whatever it produces later is dropped); a pair that raises is recorded as `crashed`
with the error. Neither stalls the batch. The expert never sees the gold patch here, whatever the
profile says (METHOD §2).

Simplified relative to the paper: SWE-bench Verified grading through our sandbox backends (local
bubblewrap, Kubernetes pods) rather than only the Docker harness; the Docker backend hands grading to
the harness itself.
"""

from __future__ import annotations

import json
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protege.config import ProtegeConfig
from protege.evaluate.metrics import numeric_metrics
from protege.evaluate.report import (
    GRADES,
    PREDICTIONS,
    RUN_INFO,
    TRAJECTORIES,
    read_grades,
    write_report,
)
from protege.tasks import TaskInstance
from protege.trajectory import Trajectory, append_trajectory, read_trajectories

PHASE = "eval"
GOLD_HEREDOC = "PROTEGE_GOLD_PATCH_EOF"
"""Heredoc delimiter of the gold-replay script (no SWE-bench patch contains this line)."""

TAG_FAILURE = "protege.failure"
"""Tag of a FAILED eval run: why its Pass@1 is not a score."""
MAX_TAG_CHARS = 5000  # MLflow's limit on a tag value is 8000 characters
Key = tuple[str, int]
Progress = Callable[[str], None]


# --------------------------------------------------------------------------------------------------
# Scripted replays (the deterministic policies that check the whole phase end to end)
# --------------------------------------------------------------------------------------------------


def gold_script(task: TaskInstance) -> list[dict[str, Any]]:
    """ScriptedPolicy turns that apply the task's gold patch (`git apply` of a heredoc) and submit."""
    patch = task.patch.rstrip("\n") + "\n"
    command = f"git apply --whitespace=nowarn - <<'{GOLD_HEREDOC}'\n{patch}{GOLD_HEREDOC}"
    return [
        {"tool": "bash", "arguments": {"command": command}, "thought": "Apply the fix."},
        {"tool": "submit", "arguments": {}},
    ]


def empty_script(task: TaskInstance) -> list[dict[str, Any]]:
    """ScriptedPolicy turns that submit without changing anything."""
    return [{"tool": "submit", "arguments": {}}]


# The built-in replays `protege eval --script` accepts besides a script file.
BUILTIN_SCRIPTS = {"gold": gold_script, "empty": empty_script}


# --------------------------------------------------------------------------------------------------
# Incremental, thread-safe results
# --------------------------------------------------------------------------------------------------


def predictions_file(out_dir: Path, attempt: int) -> Path:
    return out_dir / (PREDICTIONS if attempt == 0 else f"predictions.attempt-{attempt}.jsonl")


@dataclass
class Slot:
    """One (task, attempt) in flight: what its worker produced so far, and whether it was abandoned."""

    task: TaskInstance
    attempt: int
    trajectory: Trajectory | None = None
    grade: dict[str, Any] | None = None
    error: BaseException | None = None
    abandoned: bool = False
    started: float = field(default_factory=time.monotonic)


class ResultsWriter:
    """Appends trajectories, predictions and grades; one lock so an abandoned worker cannot interleave."""

    def __init__(self, out_dir: Path, model_name: str) -> None:
        self.out_dir = out_dir
        self.model_name = model_name
        self.lock = threading.Lock()

    def _episode(self, slot: Slot, trajectory: Trajectory) -> None:
        append_trajectory(self.out_dir / TRAJECTORIES, trajectory)
        row = {
            "instance_id": trajectory.instance_id,
            "model_name_or_path": self.model_name,
            "model_patch": trajectory.patch,
        }
        with predictions_file(self.out_dir, slot.attempt).open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        slot.trajectory = trajectory

    def episode(self, slot: Slot, trajectory: Trajectory) -> bool:
        """Record a finished episode unless its slot was abandoned; False when dropped."""
        with self.lock:
            if slot.abandoned:
                return False
            self._episode(slot, trajectory)
            return True

    def close(self, slot: Slot, grade: dict[str, Any], fallback: Trajectory | None = None) -> None:
        """Abandon the slot, write `fallback` if no episode was written, then the grading row."""
        with self.lock:
            slot.abandoned = True
            if slot.trajectory is None and fallback is not None:
                self._episode(slot, fallback)
            with (self.out_dir / GRADES).open("a") as handle:
                handle.write(json.dumps(grade) + "\n")


def grade_row(task: TaskInstance, attempt: int, resolved: bool, reason: str, **extra: Any) -> dict[str, Any]:
    return {
        "instance_id": task.instance_id,
        "attempt": attempt,
        "repo": task.repo,
        "resolved": resolved,
        "reason": reason,
        **extra,
    }


def ungraded_trajectories(out_dir: Path) -> dict[Key, Trajectory]:
    """Episodes already written but not graded (an interrupted run): they are graded, not re-run."""
    graded = read_grades(out_dir)
    path = out_dir / TRAJECTORIES
    found = {(t.instance_id, t.attempt): t for t in read_trajectories(path)} if path.is_file() else {}
    return {key: trajectory for key, trajectory in found.items() if key not in graded}


def _rewrite_jsonl(path: Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Rewrite a JSONL file with only the rows `keep` accepts (through a temporary file, then rename)."""
    if not path.is_file():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip() and keep(json.loads(line))]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{row}\n" for row in rows))
    tmp.replace(path)


def drop_infra_failures(out_dir: Path) -> list[Key]:
    """Forget the graded pairs that failed on infrastructure (policy server, sandbox, expert), so a rerun
    plays them again instead of keeping an outage as their score: their trajectory, grading and prediction
    rows are removed. Returns the pairs dropped."""
    from protege.evaluate.metrics import INFRA_FAILURES, failure_reason
    from protege.evaluate.report import load_results

    if not (out_dir / GRADES).is_file():
        return []
    episodes = load_results(out_dir).episodes
    keys = {(t.instance_id, t.attempt) for t in episodes if failure_reason(t) in INFRA_FAILURES}
    if not keys:
        return []
    for name in (TRAJECTORIES, GRADES):
        _rewrite_jsonl(
            out_dir / name, lambda row: (row["instance_id"], int(row.get("attempt", 0))) not in keys
        )
    for attempt in {attempt for _, attempt in keys}:
        ids = {instance for instance, a in keys if a == attempt}
        _rewrite_jsonl(predictions_file(out_dir, attempt), lambda row, ids=ids: row["instance_id"] not in ids)
    return sorted(keys)


def pending_pairs(
    tasks: Sequence[TaskInstance], attempts: int, out_dir: Path
) -> list[tuple[TaskInstance, int]]:
    graded = read_grades(out_dir)
    return [(t, a) for t in tasks for a in range(attempts) if (t.instance_id, a) not in graded]


# --------------------------------------------------------------------------------------------------
# The batch: workers, per-pair timeout, crash capture, progress
# --------------------------------------------------------------------------------------------------

Work = Callable[[Slot, ResultsWriter], dict[str, Any]]
"""Runs (or reuses) the episode of a slot, records it with writer.episode, and returns its grade row."""


def _failed_trajectory(slot: Slot, status: str, detail: str) -> Trajectory:
    elapsed = time.monotonic() - slot.started
    return Trajectory.failed(
        slot.task.instance_id, slot.attempt, PHASE, status, detail, resolved=False, wall_time_s=elapsed
    )


def _settle(slot: Slot, writer: ResultsWriter, timeout_s: float) -> dict[str, Any]:
    """The grade row of a slot whose worker finished, raised or ran out of time; written now."""
    from protege.agent.protocols import SandboxError

    task, attempt = slot.task, slot.attempt
    if slot.grade is not None:
        grade, fallback = slot.grade, None
    elif slot.error is None:
        detail = f"instance exceeded eval.instance_timeout_s={timeout_s:g} s"
        grade = grade_row(task, attempt, False, "timeout", detail=detail)
        fallback = _failed_trajectory(slot, "timeout", detail)
    else:
        detail = "".join(traceback.format_exception_only(slot.error)).strip()
        status = "sandbox_error" if isinstance(slot.error, SandboxError) else "policy_error"
        grade = grade_row(task, attempt, False, "crashed", detail=detail)
        fallback = _failed_trajectory(slot, status, f"crashed: {detail}")
    grade.setdefault("pair_s", time.monotonic() - slot.started)
    writer.close(slot, grade, fallback)
    return grade


def run_slot(slot: Slot, work: Work, writer: ResultsWriter, timeout_s: float) -> dict[str, Any]:
    """Run one pair in a daemon thread under the instance timeout; always returns its grade row."""
    slot.started = time.monotonic()

    def target() -> None:
        try:
            slot.grade = work(slot, writer)
        except BaseException as err:  # noqa: BLE001 - any crash of one instance is recorded, never fatal
            slot.error = err

    thread = threading.Thread(target=target, name=f"eval-{slot.task.instance_id}-{slot.attempt}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return _settle(slot, writer, timeout_s)


def progress_line(grade: dict[str, Any], done: int, total: int, resolved: int, elapsed: float) -> str:
    """done/total, the pair's outcome and time, resolved so far, ETA."""
    outcome = "resolved" if grade["resolved"] else grade["reason"]
    eta = elapsed / done * (total - done)
    return (
        f"[{done}/{total}] {grade['instance_id']} (attempt {grade['attempt']}): {outcome} "
        f"in {grade['pair_s']:.1f}s | resolved {resolved}/{done} | ETA {eta:.0f}s"
    )


def run_pairs(
    pairs: Sequence[tuple[TaskInstance, int]],
    work: Work,
    writer: ResultsWriter,
    workers: int,
    timeout_s: float,
    progress: Progress = print,
) -> list[dict[str, Any]]:
    """Every pair through `work` with `workers` in parallel; grade rows in completion order."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eval") as pool:
        futures = [
            pool.submit(run_slot, Slot(task, attempt), work, writer, timeout_s) for task, attempt in pairs
        ]
        for future in as_completed(futures):
            rows.append(future.result())
            resolved = sum(bool(row["resolved"]) for row in rows)
            progress(progress_line(rows[-1], len(rows), len(pairs), resolved, time.monotonic() - started))
    return rows


# --------------------------------------------------------------------------------------------------
# The phase
# --------------------------------------------------------------------------------------------------

PolicyFor = Callable[[TaskInstance, int], Any]
"""(task, attempt) -> the Policy of that episode."""


class EvalError(ValueError):
    """The evaluation cannot start as configured; the message names the bad item."""


class InfraFailure(RuntimeError):
    """Too many episodes failed on infrastructure (policy server, sandbox, expert) for a Pass@1 to mean
    anything; the message gives the counts, the limit and the first such episode's reason."""


def infra_failure(summary: dict[str, Any], out_dir: Path, limit: float) -> str | None:
    """Why the run's Pass@1 must not be reported (None when the infrastructure failure share is within
    `limit`, `eval.max_infra_failure_share`): a one-line reason naming counts and the first failure."""
    from protege.evaluate.metrics import INFRA_FAILURES, failure_reason

    share = summary["infra_failure_share"]
    if share <= limit:
        return None
    counts = ", ".join(f"{c} {summary['failures'][c]}" for c in INFRA_FAILURES if summary["failures"][c])
    first = next(
        (t for t in read_trajectories(out_dir / TRAJECTORIES) if failure_reason(t) in INFRA_FAILURES), None
    )
    detail = f"; first: {first.instance_id}: {first.status_detail}" if first and first.status_detail else ""
    failed = round(share * summary["episodes"])
    return (
        f"eval: {failed}/{summary['episodes']} episode(s) failed on infrastructure ({counts}), above "
        f"eval.max_infra_failure_share={limit:g}; no Pass@1 reported{detail}"
    ).replace("\n", " ")


def eval_config(cfg: ProtegeConfig, model: str) -> ProtegeConfig:
    """The run's config: the policy model set to `model`, the gold patch hidden from the expert."""
    return cfg.model_copy(
        update={
            "model": cfg.model.model_copy(update={"base": model}),
            "expert": cfg.expert.model_copy(update={"gold_patch": False}),
        }
    )


def eval_tasks(cfg: ProtegeConfig, store: Any = None) -> list[TaskInstance]:
    """The evaluation split; the local sandbox's repositories are built first when they are the demo's."""
    from protege.tasksets import ensure_local_repos, select_tasks

    tasks = select_tasks(cfg.tasks, store=store).eval
    if cfg.agent.sandbox.backend == "local":
        ensure_local_repos(tasks, cfg.tasks.eval, cfg.tasks.repos_dir, error=EvalError)
    return tasks


def policy_source(cfg: ProtegeConfig, script: str | None = None, store: Any = None) -> PolicyFor:
    """Scripted policies are per episode (they hold their position); any other policy is built once and
    shared (an in-process model is loaded once, an `s3://` model fetched once through `store`).
    `script`: `gold`, `empty` or a script file."""
    from protege.agent.policies import ScriptedPolicy
    from protege.agent.policy_choice import make_policy

    if cfg.agent.policy.backend == "oracle":  # knows its task: one per episode, like a script
        from protege.agent.teacher import OracleTeacher

        return lambda task, attempt: OracleTeacher(task, attempt)
    if cfg.agent.policy.backend != "scripted":
        shared = make_policy(cfg, store=store)
        return lambda task, attempt: shared
    if script in BUILTIN_SCRIPTS:
        return lambda task, attempt: ScriptedPolicy(BUILTIN_SCRIPTS[script](task), model=f"script:{script}")
    if not script:
        raise EvalError(f"the scripted policy needs --script ({', '.join(BUILTIN_SCRIPTS)} or a JSON file)")
    return lambda task, attempt: make_policy(cfg, script)


def make_work(
    cfg: ProtegeConfig,
    policy_for: PolicyFor,
    out_dir: Path,
    existing: dict[Key, Trajectory],
    open_sandbox: Callable[..., Any] | None = None,
) -> Work:
    """The worker of one pair: its episode (unless already written) and its grading. `open_sandbox`
    replaces protege.agent.sandbox.open_sandbox (a WarmPool's `open`)."""
    from protege.agent.agent import Agent
    from protege.agent.expert import ExpertService
    from protege.grading import GradeJob, grade_batch

    if open_sandbox is None:
        from protege.agent.sandbox import open_sandbox

    expert = ExpertService(cfg.expert) if cfg.agent.ask_expert else None  # off: the no-expert ablation
    repos_dir = Path(cfg.tasks.repos_dir)

    def work(slot: Slot, writer: ResultsWriter) -> dict[str, Any]:
        task, attempt = slot.task, slot.attempt
        trajectory = existing.get((task.instance_id, attempt))
        if trajectory is None:
            session = expert.session(cfg.agent.expert_quota, cfg.agent.cost_limit_usd) if expert else None
            with open_sandbox(cfg.agent.sandbox, task, repos_dir) as sandbox:
                agent = Agent(
                    cfg.agent, policy_for(task, attempt), sandbox, task, session, phase=PHASE, attempt=attempt
                )
                trajectory = agent.run()
            if not writer.episode(slot, trajectory):
                return {}
        else:
            with writer.lock:
                slot.trajectory = trajectory
        job = GradeJob(task, trajectory.patch, label="model")
        result = grade_batch([job], cfg, repos_dir, workers=1, run_id=PHASE, logs_dir=out_dir / "grading")[0]
        return grade_row(
            task,
            attempt,
            result.resolved,
            result.failure_reason,
            detail=result.detail,
            report=result.to_swebench(),
            log_path=result.log_path,
            grade_s=result.duration_s,
            episode_s=trajectory.wall_time_s,
        )

    return work


def opening_ahead(cfg: ProtegeConfig, episodes: Sequence[TaskInstance]) -> Any:
    """A WarmPool opening the sandboxes of the episodes after the first `eval.workers` ahead of need."""
    from protege.agent.sandbox import open_sandbox
    from protege.agent.sandbox.warm_pool import WarmPool

    warm = WarmPool(open_sandbox, cfg.agent.sandbox.prepare_ahead)
    repos_dir = Path(cfg.tasks.repos_dir)
    warm.expect(*((cfg.agent.sandbox, task, repos_dir) for task in episodes[cfg.eval.workers :]))
    return warm


def write_run_info(cfg: ProtegeConfig, model: str, out_dir: Path) -> dict[str, Any]:
    """run.json: what the results were produced with; resuming with another model is refused."""
    model_name = cfg.eval.model_name or model
    path = out_dir / RUN_INFO
    if path.is_file():
        previous = json.loads(path.read_text()).get("model_name")
        if previous and previous != model_name:
            raise EvalError(
                f"{out_dir} holds results of model '{previous}', not '{model_name}'; use another output dir"
            )
    info = {
        "model": model,
        "model_name": model_name,
        "profile": cfg.profile,
        "policy_backend": cfg.agent.policy.backend,
        "expert": f"{cfg.expert.backend}:{cfg.expert.model}",
        "eval_tasks": cfg.tasks.eval,
        "attempts": cfg.eval.attempts,
        "confidence": cfg.eval.confidence,
        "loop_metric_lengths": cfg.rl.stage1.loop.metric_lengths,
        "config_digest": cfg.digest(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=2) + "\n")
    return info


def run(
    cfg: ProtegeConfig,
    model: str,
    out_dir: str | Path,
    tracker: Any = None,
    store: Any = None,
    *,
    script: str | None = None,
    policy_for: PolicyFor | None = None,
    progress: Progress = print,
) -> dict[str, Any]:
    """Evaluate `model` on the eval split into `out_dir` (resuming what is there); report; log; upload.

    Raises InfraFailure (after the report is written, uploaded and logged on a FAILED MLflow run) when
    more than `eval.max_infra_failure_share` of the episodes failed on infrastructure.

    `tracker`: a protege.tracking.Tracker (metrics and report files go to its nested `eval` run);
    `store`: an S3ArtifactStore (the results directory is uploaded to s3://<bucket>/<run_name>/eval).
    `policy_for` replaces the configured policy (tests). Returns {"metrics", "summary", "out_dir",
    "report", "graded_now", "skipped", "uri", "mlflow_run_id"}.
    """
    cfg = eval_config(cfg, model)
    out_dir = Path(out_dir)
    info = write_run_info(cfg, model, out_dir)
    tasks = eval_tasks(cfg, store)
    retried = drop_infra_failures(out_dir)
    pairs = pending_pairs(tasks, cfg.eval.attempts, out_dir)
    skipped = len(tasks) * cfg.eval.attempts - len(pairs)
    again = f" ({len(retried)} again after an infrastructure failure)" if retried else ""
    progress(
        f"eval: {len(pairs)} episode(s) to run{again}, {skipped} already graded, {cfg.eval.workers} worker(s)"
    )
    if pairs:
        existing = ungraded_trajectories(out_dir)
        with opening_ahead(cfg, [t for t, a in pairs if (t.instance_id, a) not in existing]) as warm:
            work = make_work(
                cfg, policy_for or policy_source(cfg, script, store), out_dir, existing, warm.open
            )
            writer = ResultsWriter(out_dir, info["model_name"])
            run_pairs(pairs, work, writer, cfg.eval.workers, cfg.eval.instance_timeout_s, progress)
    paths = write_report(out_dir, confidence=cfg.eval.confidence, loop=cfg.rl.stage1.loop)
    summary = json.loads(paths["report_json"].read_text())["summary"]
    result = {
        "metrics": numeric_metrics(summary),
        "summary": summary,
        "out_dir": str(out_dir),
        "report": {name: str(path) for name, path in paths.items()},
        "graded_now": len(pairs),
        "skipped": skipped,
        "uri": None,
        "mlflow_run_id": None,
    }
    failure = infra_failure(summary, out_dir, cfg.eval.max_infra_failure_share)
    if store is not None:
        result["uri"] = store.uri(f"{cfg.run_name}/{PHASE}")
        store.upload_dir(out_dir, result["uri"])
    if tracker is not None:
        result["mlflow_run_id"] = log_to_tracker(tracker, cfg, result, out_dir, tasks, failure)
    if failure:
        raise InfraFailure(failure)
    progress(
        f"eval: Pass@1 {summary['pass_at_1']:.3f} over {summary['episodes']} episode(s); report {paths['report_md']}"
    )
    return result


def log_to_tracker(
    tracker: Any,
    cfg: ProtegeConfig,
    result: dict[str, Any],
    out_dir: Path,
    tasks: Sequence[TaskInstance] = (),
    failure: str | None = None,
) -> str:
    """Metrics, the report files, the eval set as a dataset input and every graded episode as a trace on
    the phase's nested run (opening the pipeline run if needed); the headline figures on the pipeline run
    too, where a reviewer looks first. With a `failure` the run is tagged with it and ends FAILED
    (InfraFailure raised) and no headline figure reaches the pipeline run: an outage is not a score."""
    from protege.evaluate.report import PLOTS_DIR, REPORT_JSON, REPORT_MD, load_results
    from protege.tasksets import log_task_set
    from protege.tracking.traces import log_episode_traces

    parent = tracker.ensure_pipeline(cfg.run_name, cfg)
    params = {"model": cfg.model.base, "eval_tasks": cfg.tasks.eval, "attempts": cfg.eval.attempts}
    with tracker.phase(
        PHASE, params=params, tags={"protege.results_uri": result["uri"] or str(out_dir)}
    ) as phase:
        tracker.log_metrics(phase.run_id, result["metrics"])
        for name in (REPORT_JSON, REPORT_MD, RUN_INFO):
            tracker.log_artifacts(phase.run_id, out_dir / name, "report")
        tracker.log_artifacts(phase.run_id, out_dir / PLOTS_DIR, f"report/{PLOTS_DIR}")
        if tasks:
            log_task_set(tracker, phase.run_id, "eval-tasks", cfg.tasks.eval, tasks, "evaluation")
        episodes = load_results(out_dir).episodes
        log_episode_traces(tracker, phase.run_id, episodes, model=cfg.model.base)
        if failure:
            tracker.set_tags(phase.run_id, {TAG_FAILURE: failure[:MAX_TAG_CHARS]})
            raise InfraFailure(failure)
        tracker.log_metrics(parent, headline_metrics(result["metrics"]))
        return phase.run_id


def headline_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The figures the pipeline run carries: Pass@1 with its interval, resolved and episode counts,
    expert calls and token share, steps, loop rates and costs per task (the per-reason failure counts
    stay on the eval run)."""
    return {key: value for key, value in metrics.items() if "." not in key}
