"""Phase synth (METHOD §3): expert-augmented trajectory synthesis, filtering, and the SFT dataset.

    protege synth --profile local [--tasks demo:train] [--ids a,b] [--out DIR] [--max-episodes N]

Over the training tasks, a strong teacher acts as the agent with `ask_expert` available; the expert
sees the gold patch (set here, for this phase only, never globally). The teacher is picked by
`synth.teacher` from the literal dict `TEACHERS`: `anthropic` (Claude through tool_use), `openai`
(an OpenAI-compatible server) or `oracle` (the offline scripted engineer of
`protege.agent.teacher`). `synth.concurrency` threads run `synth.attempts` attempts per task.

Incremental and resumable: each finished episode is judged and appended to `trajectories.jsonl`
at once (and uploaded to `<store>/<run_name>/synth/episodes/` when a store is given); a re-run skips
every recorded (task, attempt), so an interrupted run loses at most the episodes in flight. A torn
last line (a kill mid-write) is dropped on resume. With a store and no local file, the recorded
episodes are first restored from the store.

Faults: an episode that ended on a transient failure (an expert call that failed transiently, a policy
error, a crash from an unreachable service) is recorded with reason `transient` and run again by the next
run, so such failures never cost data. While the store is down, episode uploads are queued (the episode is
already in `trajectories.jsonl`) and retried; the phase ends only once every queued upload is done (for up
to `store.flush_timeout_s`), else it fails naming how many are pending, and a rerun first uploads every
recorded episode the store lacks.

Filters (each rejection counted by reason): `transient` (see Faults; rerun), `not_submitted` / `timeout` / `budget` (the episode
did not end with submit), `empty_patch`, `leak` (an expert reply holds `synth.leak_min_lines`
consecutive added lines of the gold diff verbatim, whitespace-normalised), `unresolved` (graded
in a fresh sandbox by `protege.grading.grade`), `error` (the episode or its grading crashed).

Budgets: an episode's dollar cap is what is left of `synth.task_budget_usd` for its task (earlier
attempts included; concurrent attempts of one task may overrun it by one episode); no episode
starts once `synth.run_budget_usd` is spent, and the expert's run budget is capped by it too.
Episodes not started for a budget are not recorded, so a re-run with a larger budget runs them.
`synth.task_timeout_s` caps each episode's wall time (the agent ends it as `timeout`).

Output: `trajectories.jsonl` (every episode, verdict in `extra.synth`), `dataset/` (the SFT
export of `protege.sft_data`), `synth_summary.json`. Simplified relative to the paper: tasks come
from any task set (paper: SWE-smith); the oracle teacher stands in for Claude offline.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from protege import patches
from protege.config import ProtegeConfig
from protege.tasks import TaskInstance
from protege.tasksets import train_tasks
from protege.trajectory import Trajectory, TrajectoryFormatError, append_trajectory, parse_record

PHASE = "synth"
TRAJECTORIES = "trajectories.jsonl"
DATASET_DIR = "dataset"
SUMMARY = "synth_summary.json"
DATASET_NAME = "synth-sft"
MLFLOW_DIGEST_CHARS = 32
"""MLflow caps dataset digests at 36 characters; the full sha256 goes in an input tag."""

Key = tuple[str, int]
PolicyFor = Callable[[TaskInstance, int], Any]
Progress = Callable[[str], None]

# Terminal statuses other than `submitted`, as rejection reasons.
STATUS_REASONS = {"timeout": "timeout", "cost_limit": "budget", "budget_exhausted": "budget"}
TRANSIENT = "transient"
"""Rejection reason of an episode that a rerun runs again."""


class SynthError(ValueError):
    """The phase cannot run as configured; the message names the bad item."""


# --------------------------------------------------------------------------------------------------
# Filters
# --------------------------------------------------------------------------------------------------


def _normalise(line: str) -> str:
    return " ".join(line.split())


def gold_added_runs(patch: str) -> list[list[str]]:
    """Runs of consecutive added lines of a diff, whitespace-normalised, blank lines skipped."""
    runs = [[text for line in run if (text := _normalise(line))] for run in patches.added_runs(patch)]
    return [run for run in runs if run]


def find_leak(reply: str, gold_patch: str, min_lines: int) -> list[str]:
    """The first `min_lines` consecutive added gold lines that appear verbatim (whitespace-normalised,
    a diff's leading `+` ignored) as consecutive lines of `reply`; [] when there is none."""
    lines = [_normalise(line) for line in reply.splitlines()]
    lines = [line[1:].strip() if line.startswith("+") else line for line in lines]
    text = "\n" + "\n".join(line for line in lines if line) + "\n"
    for run in gold_added_runs(gold_patch):
        for start in range(len(run) - min_lines + 1):
            window = run[start : start + min_lines]
            if "\n" + "\n".join(window) + "\n" in text:
                return window
    return []


def judge(
    trajectory: Trajectory, task: TaskInstance, min_lines: int, grade: Callable[..., Any]
) -> dict[str, Any]:
    """The synth verdict {"kept", "reason", "detail"}; grades (in a fresh sandbox) only what passes
    the cheap checks. Sets `trajectory.resolved` when graded."""
    if trajectory.status != "submitted":
        reason = STATUS_REASONS.get(trajectory.status, "not_submitted")
        return {"kept": False, "reason": reason, "detail": f"{trajectory.status}: {trajectory.status_detail}"}
    if not trajectory.patch.strip():
        return {"kept": False, "reason": "empty_patch", "detail": "submitted an empty patch"}
    for call in trajectory.expert_calls:
        if leaked := find_leak(call.reply, task.patch, min_lines):
            return {
                "kept": False,
                "reason": "leak",
                "detail": f"expert reply at step {call.step} pastes: {leaked}",
            }
    result = grade(task, trajectory.patch)
    trajectory.resolved = result.resolved
    if result.resolved:
        return {"kept": True, "reason": "resolved", "detail": ""}
    reason = "error" if result.failure_reason == "sandbox_error" else "unresolved"
    return {"kept": False, "reason": reason, "detail": f"{result.failure_reason}: {result.detail}"[:500]}


def transient_failure(trajectory: Trajectory) -> str:
    """Why the episode ended on a failure that may pass (then a rerun runs it again), or ''."""
    if trajectory.status == "policy_error":
        return f"policy_error: {trajectory.status_detail}"
    for call in trajectory.expert_calls:
        if call.status == "error" and call.transient:
            return f"expert call at step {call.step} failed: {call.error}"
    return ""


def transient_exception(err: BaseException) -> bool:
    """A crash a rerun may not meet again: an unreachable store or expert, a dropped connection."""
    from protege.agent.expert_backends import ExpertBackendError
    from protege.store import StoreUnavailable

    if isinstance(err, ExpertBackendError):
        return err.transient
    return isinstance(err, StoreUnavailable | ConnectionError | TimeoutError)


def verdict(trajectory: Trajectory) -> dict[str, Any]:
    return trajectory.extra.get(PHASE, {"kept": False, "reason": "error", "detail": "no verdict"})


# --------------------------------------------------------------------------------------------------
# Teachers
# --------------------------------------------------------------------------------------------------


def _oracle_teacher(cfg: ProtegeConfig) -> PolicyFor:
    from protege.agent.teacher import OracleTeacher

    s = cfg.synth
    return lambda task, attempt: OracleTeacher(
        task, attempt, model=s.teacher_model, reasoning=s.teacher_reasoning, plan=s.teacher_plan
    )


def _anthropic_teacher(cfg: ProtegeConfig) -> PolicyFor:
    from protege.agent.api_policies import AnthropicPolicy

    shared = AnthropicPolicy(cfg.agent.policy, cfg.synth.teacher_model)
    return lambda task, attempt: shared


def _openai_teacher(cfg: ProtegeConfig) -> PolicyFor:
    from protege.agent.api_policies import OpenAIChatPolicy

    shared = OpenAIChatPolicy(cfg.agent.policy, cfg.synth.teacher_model)
    return lambda task, attempt: shared


TEACHERS: dict[str, Callable[[ProtegeConfig], PolicyFor]] = {
    "oracle": _oracle_teacher,
    "anthropic": _anthropic_teacher,
    "openai": _openai_teacher,
}


def synth_config(cfg: ProtegeConfig) -> ProtegeConfig:
    """This phase's config: the expert sees the gold patch; episodes end at the task timeout."""
    agent = cfg.agent.model_copy(update={"wall_time_s": min(cfg.agent.wall_time_s, cfg.synth.task_timeout_s)})
    budget = min(cfg.expert.run_budget_usd, cfg.synth.run_budget_usd)
    expert = cfg.expert.model_copy(update={"gold_patch": True, "run_budget_usd": budget})
    return cfg.model_copy(update={"agent": agent, "expert": expert})


# --------------------------------------------------------------------------------------------------
# Recorded episodes: resume, store
# --------------------------------------------------------------------------------------------------


def load_recorded(path: Path) -> dict[Key, Trajectory]:
    """Recorded episodes by (instance, attempt); a torn last line (killed mid-write) is cut off."""
    if not path.is_file():
        return {}
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    recorded: dict[Key, Trajectory] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            trajectory = parse_record(json.loads(line), f"{path}:{number}")
        except (json.JSONDecodeError, TrajectoryFormatError):
            if number < len(lines) - 1 or raw.endswith(b"\n"):
                raise
            with path.open("r+b") as handle:  # the torn tail: keep every whole line before it
                handle.truncate(len(raw) - len(line))
            break
        recorded[(trajectory.instance_id, trajectory.attempt)] = trajectory
    return recorded


def episode_uri(prefix: str, key: Key) -> str:
    return f"{prefix}/episodes/{key[0]}.{key[1]}.json"


def upload_episode(store: Any, prefix: str, trajectory: Trajectory) -> None:
    with tempfile.TemporaryDirectory(prefix="protege-synth-") as tmp:
        local = Path(tmp) / "episode.json"
        local.write_text(trajectory.model_dump_json())
        store.upload_file(local, episode_uri(prefix, (trajectory.instance_id, trajectory.attempt)))


def missing_in_store(store: Any, prefix: str, recorded: dict[Key, Trajectory]) -> list[Key]:
    """Recorded episodes whose object is not in the store (their upload was queued when a run ended)."""
    present = set(store.list(f"{prefix}/episodes/"))
    return [key for key in recorded if episode_uri(prefix, key) not in present]


def restore_from_store(store: Any, prefix: str, path: Path) -> int:
    """Rebuild a missing local `trajectories.jsonl` from the store's per-episode objects."""
    uris = [u for u in store.list(f"{prefix}/episodes/") if u.endswith(".json")]
    with tempfile.TemporaryDirectory(prefix="protege-synth-") as tmp:
        for index, uri in enumerate(uris):
            local = store.download_file(uri, Path(tmp) / f"{index}.json")
            append_trajectory(path, parse_record(json.loads(local.read_text()), uri))
    return len(uris)


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


class SynthRun:
    """Episodes in a thread pool; records, budgets, stop hook and progress line. Thread-safe."""

    def __init__(
        self,
        cfg: ProtegeConfig,
        out_dir: Path,
        policy_for: PolicyFor,
        recorded: dict[Key, Trajectory],
        total: int,
        store: Any,
        prefix: str,
        progress: Progress,
        max_episodes: int | None,
    ) -> None:
        from protege.agent.expert import ExpertService

        self.cfg, self.out_dir, self.policy_for = cfg, out_dir, policy_for
        self.recorded, self.total, self.store, self.prefix = recorded, total, store, prefix
        self.progress, self.max_episodes = progress, max_episodes
        self.expert = ExpertService(cfg.expert)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.started = self.done = 0
        self.queued: set[Key] = set()
        """Recorded episodes whose upload waits for the store to come back."""
        self.skipped: Counter[str] = Counter()
        self.clock = time.monotonic()
        self.open_sandbox: Any = None  # set by `run`: a WarmPool's open

    def spent(self, instance_id: str | None = None) -> float:
        return sum(t.cost_usd for (i, _), t in self.recorded.items() if instance_id in (None, i))

    def admit(self, task: TaskInstance) -> tuple[str, float]:
        """('', episode cap) when the episode may start, else (why not, 0)."""
        with self.lock:
            if self.stop.is_set() or (self.max_episodes is not None and self.started >= self.max_episodes):
                return "stopped", 0.0
            if self.spent() >= self.cfg.synth.run_budget_usd:
                return "run_budget", 0.0
            left = self.cfg.synth.task_budget_usd - self.spent(task.instance_id)
            if left <= 0:
                return "task_budget", 0.0
            self.started += 1
            return "", left

    def episode(self, task: TaskInstance, attempt: int) -> Trajectory | None:
        """Run, judge and record one (task, attempt); None when it was not admitted."""
        why, cap = self.admit(task)
        if why:
            with self.lock:
                self.skipped[why] += 1
            return None
        try:
            trajectory = self.play(task, attempt, cap)
            if why := transient_failure(trajectory):  # never graded: the rerun replaces it
                trajectory.extra[PHASE] = {"kept": False, "reason": TRANSIENT, "detail": why[:500]}
            else:
                trajectory.extra[PHASE] = judge(trajectory, task, self.cfg.synth.leak_min_lines, self.grade)
        except Exception as err:  # noqa: BLE001 - one crashed episode is a rejection, never fatal
            detail = "".join(traceback.format_exception_only(err)).strip()
            reason = TRANSIENT if transient_exception(err) else "error"
            extra = {PHASE: {"kept": False, "reason": reason, "detail": detail}}
            trajectory = Trajectory.failed(
                task.instance_id, attempt, PHASE, "sandbox_error", detail, extra=extra
            )
        self.record(trajectory)
        return trajectory

    def play(self, task: TaskInstance, attempt: int, cap: float) -> Trajectory:
        from protege.agent.agent import Agent
        from protege.agent.sandbox import open_sandbox

        agent_cfg = self.cfg.agent.model_copy(update={"cost_limit_usd": cap})
        session = self.expert.session(agent_cfg.expert_quota, cap)
        opener = self.open_sandbox or open_sandbox
        with opener(agent_cfg.sandbox, task, Path(self.cfg.tasks.repos_dir)) as sandbox:
            policy = self.policy_for(task, attempt)
            return Agent(agent_cfg, policy, sandbox, task, session, phase=PHASE, attempt=attempt).run()

    def grade(self, task: TaskInstance, patch: str) -> Any:
        from protege.grading import grade

        return grade(
            task,
            patch,
            self.cfg,
            self.cfg.tasks.repos_dir,
            label=PHASE,
            run_id=PHASE,
            logs_dir=self.out_dir / "grading",
        )

    def record(self, trajectory: Trajectory) -> None:
        key = (trajectory.instance_id, trajectory.attempt)
        with self.lock:
            append_trajectory(self.out_dir / TRAJECTORIES, trajectory)
            self.recorded[key] = trajectory
            self.done += 1
        if self.store is not None:
            self.upload(key)

    def upload(self, key: Key) -> None:
        """Upload one recorded episode; while the store is down it is queued (`flush` retries it)."""
        from protege.store import StoreUnavailable

        with self.lock:
            trajectory = self.recorded[key]
        try:
            upload_episode(self.store, self.prefix, trajectory)
        except StoreUnavailable as err:
            with self.lock:
                first = not self.queued
                self.queued.add(key)
            if first:
                self.progress(
                    f"synth: store unavailable, queueing episode uploads: {str(err).splitlines()[0]}"
                )
            return
        with self.lock:
            self.queued.discard(key)

    def flush(self) -> None:
        """Retry queued uploads until none is left or `store.flush_timeout_s` passes (then SynthError)."""
        deadline = time.monotonic() + self.cfg.store.flush_timeout_s
        wait = max(self.cfg.store.retry_backoff_s, 0.1)
        while self.queued:
            for key in sorted(self.queued):
                self.upload(key)
            if not self.queued:
                self.progress("synth: every queued episode upload is done")
                return
            if time.monotonic() + wait > deadline:
                raise SynthError(
                    f"store {self.prefix}: {len(self.queued)} episode upload(s) still pending after "
                    f"{self.cfg.store.flush_timeout_s:.0f} s; every episode is in {self.out_dir / TRAJECTORIES}, "
                    "rerun to upload them"
                )
            time.sleep(wait)
            wait = min(wait * 2, max(self.cfg.store.op_backoff_max_s, 0.1))

    def line(self, trajectory: Trajectory) -> str:
        with self.lock:
            kept = sum(verdict(t)["kept"] for t in self.recorded.values())
            elapsed = time.monotonic() - self.clock
            eta = elapsed / max(self.done, 1) * max(self.total - self.done, 0)
            outcome = verdict(trajectory)
            word = "kept" if outcome["kept"] else f"rejected ({outcome['reason']})"
            return (
                f"[{self.done}/{self.total}] {trajectory.instance_id}#{trajectory.attempt}: {word} | "
                f"kept {kept} | ${self.spent():.4f} spent | ETA {eta:.0f}s"
            )

    def run(self, pairs: Sequence[tuple[TaskInstance, int]]) -> None:
        """All pairs through the pool; an exception (e.g. from `progress`) stops scheduling, lets the
        episodes in flight finish and be recorded, and propagates."""
        from protege.agent.sandbox import open_sandbox
        from protege.agent.sandbox.warm_pool import WarmPool

        workers = self.cfg.synth.concurrency
        # the sandboxes of the episodes waiting for a worker are opened while the running ones work
        warm = WarmPool(open_sandbox, self.cfg.agent.sandbox.prepare_ahead)
        repos_dir = Path(self.cfg.tasks.repos_dir)
        warm.expect(*((self.cfg.agent.sandbox, task, repos_dir) for task, _ in pairs[workers:]))
        self.open_sandbox = warm.open
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=PHASE)
        try:
            futures = [pool.submit(self.episode, task, attempt) for task, attempt in pairs]
            for future in as_completed(futures):
                if (trajectory := future.result()) is not None:
                    self.progress(self.line(trajectory))
        except BaseException:
            self.stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            warm.close()


def summary_of(cfg: ProtegeConfig, recorded: dict[Key, Trajectory]) -> dict[str, Any]:
    """Backends and counts over every recorded episode (the dataset card's run half)."""
    reasons = Counter(verdict(t)["reason"] for t in recorded.values() if not verdict(t)["kept"])
    return {
        "teacher_backend": cfg.synth.teacher,
        "teacher_model": cfg.synth.teacher_model,
        "policy_backends": sorted({t.policy_backend for t in recorded.values() if t.policy_backend}),
        "expert_backend": cfg.expert.backend,
        "expert_model": cfg.expert.model,
        "expert_gold_patch": cfg.expert.gold_patch,
        "tasks_tried": len({i for i, _ in recorded}),
        "episodes": len(recorded),
        "kept": sum(verdict(t)["kept"] for t in recorded.values()),
        "rejected_by_reason": dict(sorted(reasons.items())),
        "episode_cost_usd": round(sum(t.cost_usd for t in recorded.values()), 6),
    }


def run(
    cfg: ProtegeConfig,
    out_dir: str | Path,
    tracker: Any = None,
    store: Any = None,
    *,
    policy_for: PolicyFor | None = None,
    progress: Progress = print,
    max_episodes: int | None = None,
) -> dict[str, Any]:
    """Synthesise into `out_dir` (resuming what is there), filter, export the SFT dataset, log, upload.

    `policy_for` replaces the configured teacher (tests); `max_episodes` stops after that many new
    episodes (a deliberate interruption). Returns {"metrics", "summary", "dataset", "digest",
    "out_dir", "uri", "ran_now", "skipped", "runtime_s", "mlflow_run_id"}.
    """
    from protege.agent.tools import TOOL_SCHEMAS
    from protege.sft_data import export_dataset

    clock = time.monotonic()
    cfg = synth_config(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"s3://{cfg.store.bucket}/{cfg.run_name}/{PHASE}"
    path = out_dir / TRAJECTORIES
    with _store_faults(out_dir):
        if store is not None and not path.is_file():
            restored = restore_from_store(store, prefix, path)
            progress(f"synth: restored {restored} recorded episode(s) from {prefix}")
        recorded = load_recorded(path)
        tasks = train_tasks(cfg, store, error=SynthError)
        unsent = missing_in_store(store, prefix, recorded) if store is not None else []
    pairs = [
        (t, a) for t in tasks for a in range(cfg.synth.attempts) if _to_run(recorded, (t.instance_id, a))
    ]
    retried = sum((t.instance_id, a) in recorded for t, a in pairs)
    progress(
        f"synth: {len(pairs)} episode(s) to run ({retried} after a transient failure), {len(recorded)} "
        f"already recorded, teacher {cfg.synth.teacher}:{cfg.synth.teacher_model}, "
        f"{cfg.synth.concurrency} in parallel"
    )
    runner = SynthRun(
        cfg,
        out_dir,
        policy_for or TEACHERS[cfg.synth.teacher](cfg),
        recorded,
        len(pairs),
        store,
        prefix,
        progress,
        max_episodes,
    )
    runner.queued.update(unsent)
    if unsent:
        progress(f"synth: {len(unsent)} recorded episode(s) are not in the store yet; uploading them")
    runner.run(pairs)
    if store is not None:
        with _store_faults(out_dir):
            runner.flush()
    summary = summary_of(cfg, runner.recorded)
    kept = [t for t in runner.recorded.values() if verdict(t)["kept"]]
    export = export_dataset(kept, out_dir / DATASET_DIR, TOOL_SCHEMAS, summary)
    card = export.card
    metrics = {
        "episodes": summary["episodes"],
        "kept": summary["kept"],
        "tasks_tried": summary["tasks_tried"],
        "expert_calls_per_trajectory": card["expert_calls_per_trajectory"]["mean"],
        "cost_usd": summary["episode_cost_usd"],
        **{f"rejected.{k}": v for k, v in summary["rejected_by_reason"].items()},
    }
    result = {
        "metrics": metrics,
        "summary": summary,
        "dataset": str(export.path),
        "digest": export.digest,
        "out_dir": str(out_dir),
        "uri": None,
        "ran_now": runner.done,
        "skipped": dict(runner.skipped),
        "runtime_s": round(time.monotonic() - clock, 2),
        "mlflow_run_id": None,
    }
    (out_dir / SUMMARY).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    if store is not None:
        result["uri"] = f"{prefix}/{DATASET_DIR}"
        with _store_faults(out_dir):
            store.upload_dir(out_dir / DATASET_DIR, result["uri"])
            store.upload_file(path, f"{prefix}/{TRAJECTORIES}")
    if tracker is not None:
        result["mlflow_run_id"] = log_to_tracker(tracker, cfg, result, export)
    progress(
        f"synth: kept {summary['kept']}/{summary['episodes']} episode(s); dataset {export.path} "
        f"(sha256 {export.digest[:12]}); {result['runtime_s']:.1f}s"
    )
    return result


def _to_run(recorded: dict[Key, Trajectory], key: Key) -> bool:
    """Not recorded yet, or recorded as a transient failure (run again)."""
    return key not in recorded or verdict(recorded[key])["reason"] == TRANSIENT


@contextmanager
def _store_faults(out_dir: Path) -> Iterator[None]:
    """A store that stays unreachable through its retries ends the phase with one line (nothing is lost:
    episodes are in the local file and a rerun uploads what the store lacks)."""
    from protege.store import StoreUnavailable

    try:
        yield
    except StoreUnavailable as err:
        raise SynthError(
            f"{str(err).splitlines()[0]}; every recorded episode is kept in {out_dir / TRAJECTORIES}, "
            "rerun synth once the store is back"
        ) from None


def log_to_tracker(tracker: Any, cfg: ProtegeConfig, result: dict[str, Any], export: Any) -> str:
    """Metrics, the dataset as a run input with its digest, the card and the first
    `tracking.trace_sample` episodes as traces, on the phase's nested run."""
    from protege.tracking.traces import log_episode_traces
    from protege.trajectory import read_trajectories

    tracker.ensure_pipeline(cfg.run_name, cfg)
    params = {
        "teacher": f"{cfg.synth.teacher}:{cfg.synth.teacher_model}",
        "attempts": cfg.synth.attempts,
        "expert": f"{cfg.expert.backend}:{cfg.expert.model}",
        "train_tasks": cfg.tasks.train,
    }
    with tracker.phase(PHASE, params=params, tags={"protege.dataset_sha256": export.digest}) as phase:
        tracker.log_metrics(phase.run_id, result["metrics"])
        tracker.log_dataset(
            phase.run_id,
            DATASET_NAME,
            result["uri"] or str(export.path),
            digest=export.digest[:MLFLOW_DIGEST_CHARS],
            context="synthesis",
            tags={"sha256": export.digest, "records": export.records},
        )
        tracker.log_artifacts(phase.run_id, export.card_path, "dataset")
        tracker.log_artifacts(phase.run_id, export.readme_path, "dataset")
        episodes = Path(result["out_dir"]) / TRAJECTORIES
        if cfg.tracking.trace_sample and episodes.is_file():
            log_episode_traces(tracker, phase.run_id, read_trajectories(episodes), cfg.tracking.trace_sample)
        return phase.run_id
