"""`protege tasks generate`: task instances made by injecting one small bug into a repository.

SWE-smith's procedural modification on our own repositories. For each repository (a git directory, or
`demo:<name>` / `demo:all` for the bundled ones):

1. its tests run once at HEAD in a copy of the tree; every one must pass (a red suite cannot tell which
   failure a mutation caused);
2. `protege.taskgen.mutate` lists single-line mutations inside function bodies; they are tried in a
   seeded order that visits every function before a second mutation of any, each with ONE run of the
   whole suite, `workers` at a time, each worker in its own copy of the tree with its own pytest fork
   server (`protege.taskgen.pytest_server`: pytest imported once, a fresh child per run);
3. a mutation is kept when some test that passed at HEAD fails (or errors) with it: those are
   FAIL_TO_PASS; the other tests of the same files that still pass are PASS_TO_PASS;
4. the instance's base_commit is a parentless commit in the repository (ref
   `refs/protege/generated/<instance_id>`): HEAD's tree with the mutation and without the test files
   holding FAIL_TO_PASS tests (as SWE-smith's "Remove F2P Tests"); having no parent, its history shows
   nothing of the mutation. The gold patch reverts the mutation; the test patch adds the test files back.
   Commits are deterministic (fixed identity and date), so a rerun writes the same SHAs.

Every tried mutation is appended to `candidates.jsonl` in the output directory, so an interrupted run
resumes where it stopped. The instances are split train/eval by repository (`split=repo`: whole
repositories held out) or by function (`split=function`: whole functions held out in every repository),
and written as `train.jsonl` / `eval.jsonl` with their digests in `manifest.json`.

    protege tasks generate demo:all --n 40 --out .protege/tasks/generated
    protege tasks verify .protege/tasks/generated/train.jsonl
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protege.taskgen.core import (
    DEMO_PREFIX,
    TaskgenError,
    TestEnvironment,
    TestRun,
    demo_sources,
    export_tree,
    git,
    is_test_file,
    read_rows,
    resolve_repo,
    run_tests,
    say_line,
    test_environment,
)
from protege.taskgen.mutate import Mutation, mutations
from protege.taskgen.pytest_server import PytestServer
from protege.taskgen.snapshot import build_instance, restore_commits
from protege.taskgen.split import INSTANCES, unique_rows, write_split

CANDIDATES = "candidates.jsonl"
MANIFEST = "manifest.json"
SPLITS = ("repo", "function")


@dataclass
class GenerateOptions:
    """What `generate` does; every field has the CLI's default."""

    n: int = 40
    """Valid instances wanted per repository (fewer when its mutations run out)."""
    out: Path = Path(".protege/tasks/generated")
    """Output directory: candidates.jsonl, instances.jsonl, train.jsonl, eval.jsonl, manifest.json."""
    repos_dir: Path = Path(".protege/repos")
    """Where `demo:` repositories are built (tasks.repos_dir: grading reads the commits from there)."""
    workers: int = max(1, os.cpu_count() or 1)
    """Test runs in parallel."""
    seed: int = 0
    """Order in which mutations are tried, and the split."""
    split: str = "repo"
    """`repo`: hold out whole repositories; `function`: hold out whole functions in every repository."""
    eval_fraction: float = 0.25
    """Share of repositories (or functions) held out for evaluation."""
    timeout_s: float = 0.0
    """Per test run; 0 = five times the baseline run plus 10 s (a mutation can loop forever)."""
    python: str = ""
    """Interpreter that runs the tests; empty = the repository's environment (`environments`)."""
    environments: Any = None
    """`agent.sandbox.environments` (protege.environments) to resolve each repository's; None = this one."""


@dataclass
class RepoResult:
    """What one repository's generation did (the manifest's `runs` entry)."""

    repo: str
    tried: int = 0
    valid: int = 0
    candidates: int = 0
    error: str = ""
    reasons: dict[str, int] = field(default_factory=lambda: defaultdict(int))


# --------------------------------------------------------------------------------------------------
# Candidates
# --------------------------------------------------------------------------------------------------


def candidate_order(found: list[Mutation], seed: int) -> list[Mutation]:
    """Mutations in a seeded order that takes one from each function in turn (functions shuffled,
    mutations within a function shuffled), so a small `n` still spreads over many functions."""
    rng = random.Random(seed)
    by_function: dict[tuple[str, str], list[Mutation]] = defaultdict(list)
    for mutation in found:
        by_function[(mutation.path, mutation.function)].append(mutation)
    queues = [by_function[key] for key in sorted(by_function)]
    rng.shuffle(queues)
    for queue in queues:
        rng.shuffle(queue)
    ordered = []
    while any(queues):
        for queue in queues:
            if queue:
                ordered.append(queue.pop())
    return ordered


def source_mutations(tree: Path) -> list[Mutation]:
    """Every mutation of the tree's non-test Python files."""
    found = []
    for path in sorted(tree.rglob("*.py")):
        relative = path.relative_to(tree).as_posix()
        if is_test_file(relative) or relative.startswith(".") or relative in ("setup.py", "noxfile.py"):
            continue
        found += mutations(relative, path.read_text(encoding="utf-8"))
    return found


# --------------------------------------------------------------------------------------------------
# One mutation, one run
# --------------------------------------------------------------------------------------------------


Slot = tuple[Path, PytestServer]
"""A worker's copy of the tree and its pytest fork server."""


@dataclass
class Outcome:
    mutation: Mutation
    run: TestRun | None
    broken: list[str]
    reason: str


def try_mutation(
    slot: Slot, mutation: Mutation, baseline: TestRun, opts: GenerateOptions, timeout: float
) -> Outcome:
    """Apply `mutation` in the worker's tree, run the whole suite once, put the file back."""
    tree, server = slot
    target = tree / mutation.path
    original = target.read_text(encoding="utf-8")
    target.write_text(mutation.apply(original), encoding="utf-8")
    try:
        run = server.run(tree, timeout_s=timeout)
    finally:
        target.write_text(original, encoding="utf-8")
    if run.timed_out:
        return Outcome(mutation, None, [], f"tests time out (> {timeout:.0f} s)")
    broken = sorted(baseline.passed - run.passed)
    return Outcome(mutation, run, broken, "" if broken else "no test fails")


# --------------------------------------------------------------------------------------------------
# One repository
# --------------------------------------------------------------------------------------------------

Say = Callable[[str], None] | None


def _append(path: Path, row: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def _green_baseline(
    source: str, pristine: Path, head: str, opts: GenerateOptions, env: TestEnvironment
) -> TestRun:
    baseline = run_tests(
        pristine, python=env.python, env=env.variables(pristine), timeout_s=opts.timeout_s or 600
    )
    if baseline.timed_out or not baseline.statuses:
        tail = baseline.output.strip().splitlines()[-1:] or ["no output"]
        raise TaskgenError(f"{source}: no test results at HEAD {head[:12]} ({tail[0]})")
    if baseline.not_passed:
        first = sorted(baseline.not_passed)[0]
        raise TaskgenError(
            f"{source}: {len(baseline.not_passed)} test(s) do not pass at HEAD {head[:12]} (first: {first}); "
            "generate needs a suite that passes"
        )
    return baseline


def _eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


def generate_repo(source: str, opts: GenerateOptions, say: Say = None) -> RepoResult:
    """Try mutations of one repository until `opts.n` are valid (or none are left); resumable."""
    say = say or say_line
    repo_dir, repo = resolve_repo(source, opts.repos_dir)
    head = git(repo_dir, "rev-parse", "HEAD").strip()
    date = git(repo_dir, "log", "-1", "--format=%cI", "HEAD").strip()
    candidates_path, instances_path = opts.out / CANDIDATES, opts.out / INSTANCES
    tried = {
        row["mutation_id"]
        for row in read_rows(candidates_path)
        if row.get("repo") == repo and row.get("source_commit") == head
    }
    existing = [
        row for row in unique_rows(instances_path) if row["repo"] == repo and row["source_commit"] == head
    ]
    restored = restore_commits(repo_dir, existing)
    result = RepoResult(repo, valid=len(existing))
    if restored:
        say(f"{repo}: recreated {restored} snapshot commit(s) missing from {repo_dir}")
    if result.valid >= opts.n:
        say(f"{repo}: {result.valid} valid instance(s) already in {instances_path}")
        return result
    with tempfile.TemporaryDirectory(prefix="protege-taskgen-") as tmp:
        pristine = export_tree(repo_dir, head, Path(tmp) / "pristine")
        env = (
            TestEnvironment(opts.python)
            if opts.python
            else test_environment(repo_dir, repo, head, opts.environments)
        )
        baseline = _green_baseline(source, pristine, head, opts, env)
        timeout = opts.timeout_s or baseline.duration_s * 5 + 10
        found = candidate_order(source_mutations(pristine), opts.seed)
        result.candidates = len(found)
        todo = [m for m in found if m.mutation_id not in tried]
        say(
            f"{repo}: {len(baseline.passed)} tests pass at HEAD {head[:12]} ({baseline.duration_s:.1f}s); "
            f"{len(found)} mutations, {len(todo)} untried; want {opts.n - result.valid} more valid"
        )
        with ExitStack() as stack:
            slots = [
                (tree, stack.enter_context(PytestServer(env.python, env.variables(tree))))
                for tree in [
                    shutil.copytree(pristine, Path(tmp) / f"worker-{i}") for i in range(opts.workers)
                ]
            ]
            _run_candidates(
                todo,
                slots,
                baseline,
                timeout,
                opts,
                say,
                result,
                lambda outcome: _keep(outcome, repo_dir, repo, head, date, pristine, baseline, opts),
            )
    return result


def _keep(
    outcome: Outcome,
    repo_dir: Path,
    repo: str,
    head: str,
    date: str,
    pristine: Path,
    baseline: TestRun,
    opts: GenerateOptions,
) -> dict[str, Any]:
    """Record a tried mutation; a valid one becomes a commit and an instance row first."""
    row = {
        "repo": repo,
        "source_commit": head,
        "mutation_id": outcome.mutation.mutation_id,
        "mutation": outcome.mutation.to_dict(),
        "outcome": "valid" if not outcome.reason else outcome.reason,
        "failing": outcome.broken,
    }
    if not outcome.reason and outcome.run is not None:
        instance = build_instance(
            repo_dir, repo, head, date, pristine, outcome.mutation, outcome.broken, outcome.run, baseline
        )
        _append(opts.out / INSTANCES, instance)
        row["instance_id"] = instance["instance_id"]
    _append(opts.out / CANDIDATES, row)
    return row


def _run_candidates(
    todo: list[Mutation],
    slots: list[Slot],
    baseline: TestRun,
    timeout: float,
    opts: GenerateOptions,
    say: Say,
    result: RepoResult,
    keep: Callable[[Outcome], dict[str, Any]],
) -> None:
    """Run mutations `len(slots)` at a time until `opts.n` are valid; progress with ETA every few s.

    Outcomes are kept in the candidates' order, whichever run finishes first, so the same arguments keep
    the same mutations on every machine; runs finished past the n-th valid one are not recorded."""
    free = list(slots)
    pending: dict[Future[Outcome], tuple[int, Slot]] = {}
    finished: dict[int, Outcome] = {}
    submitted = recorded = 0
    started = last_said = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(slots), thread_name_prefix="taskgen") as pool:
        while recorded < len(todo) and result.valid < opts.n:
            while submitted < len(todo) and free:
                slot = free.pop()
                future = pool.submit(try_mutation, slot, todo[submitted], baseline, opts, timeout)
                pending[future] = (submitted, slot)
                submitted += 1
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                index, slot = pending.pop(future)
                free.append(slot)
                finished[index] = future.result()
            while recorded in finished and result.valid < opts.n:
                row = keep(finished.pop(recorded))
                recorded += 1
                result.tried += 1
                result.reasons[row["outcome"]] += 1
                result.valid += row["outcome"] == "valid"
            now = time.monotonic()
            if now - last_said >= 3 or recorded == len(todo) or result.valid >= opts.n:
                last_said = now
                _say_progress(
                    say, result, opts.n, len(todo) - recorded, (now - started) / max(1, result.tried)
                )
        for future in pending:
            future.cancel()


def _say_progress(say: Say, result: RepoResult, n: int, left: int, per_run: float) -> None:
    hit_rate = max(result.reasons["valid"], 1) / max(1, result.tried)
    needed = min(left, (n - result.valid) / hit_rate)
    say(
        f"  {result.repo}: {result.tried} tried, {result.valid}/{n} valid, "
        f"{left} left, {per_run:.2f}s/run, ETA {_eta(needed * per_run)}"
    )


# --------------------------------------------------------------------------------------------------
# All repositories, the split, the manifest
# --------------------------------------------------------------------------------------------------


def expand_sources(sources: list[str]) -> list[str]:
    """`demo:all` stands for every bundled repository."""
    expanded: list[str] = []
    for source in sources:
        expanded += demo_sources() if source == f"{DEMO_PREFIX}all" else [source]
    return list(dict.fromkeys(expanded))


def generate(sources: list[str], opts: GenerateOptions, say: Say = None) -> dict[str, Any]:
    """Generate for every repository, then (re)write the split and the manifest; returns the manifest.
    A repository that cannot be used (red suite, not a repository) is reported and skipped."""
    say = say or say_line
    if opts.split not in SPLITS:
        raise TaskgenError(f"--split must be one of {', '.join(SPLITS)}, got {opts.split!r}")
    if not 0 <= opts.eval_fraction < 1:
        raise TaskgenError(f"--eval-fraction must be in [0, 1), got {opts.eval_fraction}")
    sources = expand_sources(sources)
    for source in sources:  # a REPO that names nothing is bad input, before any work
        resolve_repo(source, opts.repos_dir)
    opts.out.mkdir(parents=True, exist_ok=True)
    results = []
    for source in sources:
        try:
            results.append(generate_repo(source, opts, say))
        except TaskgenError as err:
            say(f"{source}: skipped: {err}")
            results.append(RepoResult(source, error=str(err)))
    manifest = write_split(opts.out, opts.split, opts.eval_fraction, opts.seed)
    manifest["runs"] = {
        r.repo: {
            "candidates": r.candidates,
            "tried": r.tried,
            "valid": r.valid,
            "outcomes": dict(r.reasons),
            **({"error": r.error} if r.error else {}),
        }
        for r in results
    }
    (opts.out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest
