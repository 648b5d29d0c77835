"""A kept mutation becomes a commit in the repository and a task instance.

The instance's base_commit is a parentless commit (ref `refs/protege/generated/<instance_id>`): HEAD's
tree with the mutation applied and without the test files that hold FAIL_TO_PASS tests (SWE-smith's
"Remove F2P Tests"). Having no parent, its history shows nothing of the mutation. The gold patch (the
diff from it back to HEAD for the mutated file) reverts the mutation; the test patch adds the test files
back. The commit's identity and date are fixed, so the same mutation of the same HEAD has the same SHA on
every machine, and `restore_commits` can recreate a lost one from the row alone.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from protege.taskgen.core import TaskgenError, TestRun, git, git_env, make_instance
from protege.taskgen.mutate import Mutation
from protege.taskgen.statement import problem_statement

REF_PREFIX = "refs/protege/generated/"


def instance_id_of(repo: str, mutation: Mutation) -> str:
    # neutral: the id says nothing of the bug's kind or place (the row's `mutation` field does)
    return f"{repo.replace('/', '__')}.gen-{mutation.mutation_id}"


def snapshot_commit(repo_dir: Path, head: str, mutation: Mutation, hidden: list[str], date: str) -> str:
    """The parentless commit of HEAD's tree with `mutation` applied and the `hidden` files removed."""
    original = git(repo_dir, "show", f"{head}:{mutation.path}")
    with tempfile.TemporaryDirectory(prefix="protege-taskgen-index-") as tmp:
        env = {**git_env(date), "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git(repo_dir, "read-tree", head, env=env)
        mode = git(repo_dir, "ls-files", "-s", "--", mutation.path, env=env).split(" ", 1)[0] or "100644"
        mutated = mutation.apply(original).encode()
        blob = git(repo_dir, "hash-object", "-w", "--stdin", stdin=mutated, env=env).strip()
        git(repo_dir, "update-index", "--cacheinfo", f"{mode},{blob},{mutation.path}", env=env)
        git(repo_dir, "update-index", "--force-remove", "--", *hidden, env=env)
        tree = git(repo_dir, "write-tree", env=env).strip()
        message = "Snapshot for a generated task\n"
        return git(repo_dir, "commit-tree", tree, "-m", message, env=env).strip()


def build_instance(
    repo_dir: Path,
    repo: str,
    head: str,
    date: str,
    pristine: Path,
    mutation: Mutation,
    broken: list[str],
    run: TestRun,
    baseline: TestRun,
) -> dict[str, Any]:
    """Commit the snapshot of a kept mutation (`broken`: its FAIL_TO_PASS tests; `run`: the run that
    showed them) and return the instance row, with the function, mutation and hidden files beside it."""
    hidden = sorted({test.split("::", 1)[0] for test in broken})
    base = snapshot_commit(repo_dir, head, mutation, hidden, date)
    instance_id = instance_id_of(repo, mutation)
    git(repo_dir, "update-ref", REF_PREFIX + instance_id, base)
    gold = git(repo_dir, "diff", "--no-color", "--no-ext-diff", base, head, "--", mutation.path)
    test_patch = git(repo_dir, "diff", "--no-color", "--no-ext-diff", base, head, "--", *hidden)
    pass_to_pass = sorted(t for t in run.passed & baseline.passed if t.split("::", 1)[0] in hidden)
    instance = make_instance(
        instance_id=instance_id,
        repo=repo,
        base_commit=base,
        problem_statement=problem_statement(broken, run.output, pristine, gold),
        patch=gold,
        test_patch=test_patch,
        fail_to_pass=broken,
        pass_to_pass=pass_to_pass,
        created_at=date,
    )
    extra = {
        "function": f"{mutation.path}::{mutation.function}",
        "mutation": mutation.to_dict(),
        "hidden_tests": hidden,
        "source_commit": head,
    }
    return {**instance.to_swebench(), **extra}


def has_commit(repo_dir: Path, sha: str) -> bool:
    try:
        git(repo_dir, "cat-file", "-e", f"{sha}^{{commit}}")
        return True
    except TaskgenError:
        return False


def restore_commits(repo_dir: Path, rows: list[dict[str, Any]]) -> int:
    """Recreate the snapshot commits of earlier rows that `repo_dir` lacks (it was rebuilt since);
    returns how many. A row whose commit comes out different (HEAD moved) is an error naming it."""
    restored = 0
    for row in rows:
        if has_commit(repo_dir, row["base_commit"]):
            continue
        mutation = Mutation(**row["mutation"])
        sha = snapshot_commit(
            repo_dir, row["source_commit"], mutation, row["hidden_tests"], row["created_at"]
        )
        if sha != row["base_commit"]:
            raise TaskgenError(
                f"{row['instance_id']}: base_commit {row['base_commit']} cannot be recreated in {repo_dir}"
            )
        git(repo_dir, "update-ref", REF_PREFIX + row["instance_id"], sha)
        restored += 1
    return restored
