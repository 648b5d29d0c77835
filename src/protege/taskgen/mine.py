"""`protege tasks mine`: task instances from a repository's own fix commits (SWE-smith's "mirroring").

For a commit C with parent P the diff P..C is split into the test patch (test files, see
`core.is_test_file`) and the gold patch (everything else). The test files the test patch leaves in place
run twice in a copy of P: with the test patch alone, then with the gold patch too. FAIL_TO_PASS are the
tests that pass only with the fix (they failed, errored or did not exist before), PASS_TO_PASS the ones
that pass both times. The instance starts at P (base_commit), whose history holds nothing of the fix.

A commit that touches no test file runs the whole suite instead (a refactor: nothing should flip). A
commit is skipped, with its reason, when it is a root or merge commit, touches only test files, changes
no test outcome, or flips tests without touching any test file (no test patch to grade with). Over a
range every commit is tried in order.

    protege tasks mine demo:lrucache HEAD~1             # one commit
    protege tasks mine ~/src/myproj v1.2..main --repo-name me/myproj
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protege.demo.taskset import patch_files
from protege.taskgen.core import (
    TaskgenError,
    TestEnvironment,
    apply_patch,
    export_tree,
    flips,
    git,
    is_test_file,
    make_instance,
    merge_rows,
    resolve_repo,
    run_tests,
    say_line,
    test_environment,
)


@dataclass
class MineOptions:
    """What `mine` does; every field has the CLI's default."""

    out: Path | None = None
    """JSONL file the instances are merged into; None = .protege/tasks/mined-<owner__name>.jsonl."""
    repos_dir: Path = Path(".protege/repos")
    """Where `demo:` repositories are built (tasks.repos_dir)."""
    issue: str | None = None
    """File with the problem statement (one commit only); None = the commit's message."""
    repo_name: str | None = None
    """`owner/name` written as the instances' repo; None = local/<dirname> (demo: its own name)."""
    timeout_s: float = 300.0
    """Per test run."""
    python: str = ""
    """Interpreter that runs the tests; empty = the repository's environment (`environments`)."""
    environments: Any = None
    """`agent.sandbox.environments` (protege.environments) to resolve the repository's; None = this one."""


@dataclass
class MineReport:
    mined: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    """commit -> reason."""
    out: Path | None = None


def commits_of(repo_dir: Path, spec: str) -> list[str]:
    """The commits a FIX_COMMIT argument names, oldest first: one commit, the commits of a range A..B (after
    A, up to B), or `..B` (every commit up to B)."""
    if ".." in spec:
        # `..B` (no start) is every commit up to B, the root included; `A..B` is git's own range
        listed = git(
            repo_dir, "rev-list", "--reverse", spec.removeprefix("..") if spec.startswith("..") else spec
        ).split()
        if not listed:
            raise TaskgenError(f"{repo_dir}: range {spec} holds no commit")
        return listed
    try:
        return [git(repo_dir, "rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}").strip()]
    except TaskgenError:
        raise TaskgenError(f"{repo_dir}: no commit {spec!r}") from None


def split_fix(repo_dir: Path, parent: str, commit: str) -> tuple[str, str, list[str], list[str]]:
    """(gold patch, test patch, non-test files, test files) of parent..commit."""
    changed = git(repo_dir, "diff", "--name-only", "--no-renames", parent, commit).split("\n")
    changed = [name for name in changed if name]
    tests = [name for name in changed if is_test_file(name)]
    code = [name for name in changed if not is_test_file(name)]

    def diff(names: list[str]) -> str:
        if not names:
            return ""
        return git(
            repo_dir,
            "diff",
            "--no-color",
            "--no-ext-diff",
            "--no-renames",
            "--binary",
            parent,
            commit,
            "--",
            *names,
        )

    return diff(code), diff(tests), code, tests


def mine_commit(repo_dir: Path, repo: str, commit: str, opts: MineOptions) -> dict[str, Any] | str:
    """The instance row of `commit`, or the reason it yields none."""
    parents = git(repo_dir, "rev-list", "--parents", "-n", "1", commit).split()[1:]
    if not parents:
        return "root commit: no parent to run the tests at"
    if len(parents) > 1:
        return "merge commit: mine its parents' commits instead"
    parent = parents[0]
    gold, test_patch, code, tests = split_fix(repo_dir, parent, commit)
    if not code:
        return "changes only test files: no fix to mine"
    # the eval script runs pytest on every file the test patch names; without a test patch, the whole suite
    runnable = patch_files(test_patch)
    if missing := [name for name in runnable if not _exists(repo_dir, commit, name)]:
        return f"deletes test file {missing[0]}: the eval script could not run it"
    with tempfile.TemporaryDirectory(prefix="protege-mine-") as tmp:
        tree = export_tree(repo_dir, parent, Path(tmp) / "tree")
        apply_patch(tree, test_patch, f"{commit[:12]}: test patch")
        env = (
            TestEnvironment(opts.python)
            if opts.python
            else test_environment(repo_dir, repo, parent, opts.environments)
        )
        before = run_tests(
            tree, runnable, python=env.python, env=env.variables(tree), timeout_s=opts.timeout_s
        )
        apply_patch(tree, gold, f"{commit[:12]}: gold patch")
        after = run_tests(
            tree, runnable, python=env.python, env=env.variables(tree), timeout_s=opts.timeout_s
        )
    if before.timed_out or after.timed_out:
        return f"tests time out (> {opts.timeout_s:g} s)"
    fail_to_pass, pass_to_pass = flips(before, after)
    if not fail_to_pass:
        return (
            f"changes no test outcome: {len(after.passed)} test(s) pass and "
            f"{len(after.not_passed)} do not, before and after the change"
        )
    if not tests:
        return (
            f"makes {len(fail_to_pass)} test(s) pass but changes no test file: an instance needs a test patch"
        )
    return _row(repo_dir, repo, parent, commit, gold, test_patch, fail_to_pass, pass_to_pass, opts)


def _exists(repo_dir: Path, commit: str, name: str) -> bool:
    return bool(git(repo_dir, "ls-tree", "--name-only", commit, "--", name).strip())


def _row(
    repo_dir: Path,
    repo: str,
    parent: str,
    commit: str,
    gold: str,
    test_patch: str,
    fail_to_pass: list[str],
    pass_to_pass: list[str],
    opts: MineOptions,
) -> dict[str, Any]:
    message = git(repo_dir, "log", "-1", "--format=%B", commit).strip()
    statement = Path(opts.issue).read_text(encoding="utf-8") if opts.issue else message + "\n"
    instance = make_instance(
        instance_id=f"{repo.replace('/', '__')}-{commit[:10]}",
        repo=repo,
        base_commit=parent,
        problem_statement=statement,
        patch=gold,
        test_patch=test_patch,
        fail_to_pass=fail_to_pass,
        pass_to_pass=pass_to_pass,
        created_at=git(repo_dir, "log", "-1", "--format=%cI", commit).strip(),
    )
    return {**instance.to_swebench(), "fix_commit": commit}


def mine(
    source: str, commits: str, opts: MineOptions, say: Callable[[str], None] | None = None
) -> MineReport:
    """Mine every commit `commits` names in `source` (see `resolve_repo`); merge the instances into the
    output file and say, for each other commit, why it was skipped."""
    say = say or say_line
    repo_dir, repo = resolve_repo(source, opts.repos_dir, opts.repo_name)
    listed = commits_of(repo_dir, commits)
    if opts.issue and len(listed) > 1:
        raise TaskgenError(
            f"--issue {opts.issue}: one problem statement for {len(listed)} commits; name one commit"
        )
    if opts.issue and not Path(opts.issue).is_file():
        raise TaskgenError(f"--issue {opts.issue}: no such file")
    report = MineReport(out=opts.out or Path(".protege/tasks") / f"mined-{repo.replace('/', '__')}.jsonl")
    for index, commit in enumerate(listed, 1):
        subject = git(repo_dir, "log", "-1", "--format=%s", commit).strip()
        outcome = mine_commit(repo_dir, repo, commit, opts)
        where = f"[{index}/{len(listed)}] {commit[:12]} {subject[:60]!r}"
        if isinstance(outcome, str):
            report.skipped[commit] = outcome
            say(f"{where}: skipped: {outcome}")
        else:
            report.mined.append(outcome)
            f2p, p2p = (len(json.loads(outcome[key])) for key in ("FAIL_TO_PASS", "PASS_TO_PASS"))
            say(f"{where}: mined {outcome['instance_id']}: {f2p} FAIL_TO_PASS, {p2p} PASS_TO_PASS")
    if report.mined:
        merge_rows(report.out, report.mined)
    say(
        f"{len(report.mined)} instance(s) mined, {len(report.skipped)} commit(s) skipped"
        + (f"; instances in {report.out}" if report.mined else "")
    )
    if report.mined and not (opts.repos_dir / repo.replace("/", "__")).exists():
        say(
            f"note: grading reads the repository from {opts.repos_dir / repo.replace('/', '__')} (tasks.repos_dir)"
        )
    return report
