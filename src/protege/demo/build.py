"""Build the demo repositories as real git histories, reproducibly.

Each demo repository is committed from the files in `demo/repos/<name>/`, following the commit list
of its `demo/tasks/<name>/task.yaml` (message, date, files that commit adds). Author, committer,
dates, file modes and the default branch are fixed and no user or system git configuration is read,
so every machine produces the same commit SHAs. The gold fix is never committed: the last commit is
the task's base_commit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from protege.demo.spec import DemoTaskSpec, load_specs

GIT_USER_NAME = "protege demo"
GIT_USER_EMAIL = "demo@protege.invalid"
DEFAULT_BRANCH = "main"
# Git stores only 100644 or 100755; every demo file is a plain, non-executable file.
FILE_MODE = 0o644
# Written inside `.git` (never committed): marks a directory this builder may replace.
BUILT_MARKER = "protege-demo"


class DemoBuildError(RuntimeError):
    """A demo repository could not be built; the message names the repository and the reason."""


def _git_env() -> dict[str, str]:
    # Only what git needs: no user/system config (hooks, signing, autocrlf, templates would all
    # change the result), a fixed identity and a C locale for parseable messages.
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "LC_ALL": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_NAME": GIT_USER_NAME,
        "GIT_AUTHOR_EMAIL": GIT_USER_EMAIL,
        "GIT_COMMITTER_NAME": GIT_USER_NAME,
        "GIT_COMMITTER_EMAIL": GIT_USER_EMAIL,
    }
    if "SYSTEMROOT" in os.environ:  # Windows needs it to start processes at all
        env["SYSTEMROOT"] = os.environ["SYSTEMROOT"]
    return env


def git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run `git args` in `repo` with the builder's isolated environment; stdout, or DemoBuildError."""
    result = subprocess.run(
        ["git", *args], cwd=repo, env=env or _git_env(), capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise DemoBuildError(f"{repo}: git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def head_commit(repo: Path) -> str:
    """Full SHA of HEAD in `repo`."""
    return git(repo, "rev-parse", "HEAD").strip()


def _commit_all(spec: DemoTaskSpec, tree: Path) -> None:
    tree.mkdir(parents=True)
    git(tree, "init", "--quiet", f"--initial-branch={DEFAULT_BRANCH}")
    for commit in spec.commits:
        for name in commit.files:
            source = spec.source_file(name)
            if not source.is_file():
                raise DemoBuildError(
                    f"{spec.task_yaml}: commit {commit.message!r} lists {name}, but {source} is missing"
                )
            target = tree / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
            target.chmod(FILE_MODE)
        git(tree, "add", "--", *commit.files)
        env = {**_git_env(), "GIT_AUTHOR_DATE": commit.date, "GIT_COMMITTER_DATE": commit.date}
        git(
            tree,
            "-c",
            "commit.gpgsign=false",
            "commit",
            "--quiet",
            "--no-verify",
            "-m",
            commit.message,
            env=env,
        )


def build_repo(spec: DemoTaskSpec, dest: Path) -> Path:
    """Build `spec`'s repository at `dest/<owner__name>` and return its path.

    An existing directory there is kept when its HEAD already is the commit this build produces,
    replaced when this builder made it earlier (a stale build), and otherwise left alone with a
    DemoBuildError: the builder never deletes a repository it did not create.
    """
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / spec.repo_dirname
    staging = dest / f".building-{spec.repo_dirname}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _commit_all(spec, staging)
        (staging / ".git" / BUILT_MARKER).write_text(spec.repo + "\n")
        if target.exists():
            if (target / ".git").is_dir() and _head_or_none(target) == head_commit(staging):
                return target
            if not (target / ".git" / BUILT_MARKER).is_file():
                raise DemoBuildError(
                    f"{target} exists and was not built by protege.demo; remove it or choose another dest"
                )
            shutil.rmtree(target)
        staging.rename(target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _head_or_none(repo: Path) -> str | None:
    try:
        return head_commit(repo)
    except DemoBuildError:
        return None


def build_demo_repos(dest: Path, only: Iterable[str] | None = None) -> dict[str, Path]:
    """Build every demo repository (or those whose repo name, e.g. `protege-demo/lrucache`, is in
    `only`) under `dest`; returns {repo: path}. Idempotent: see `build_repo`."""
    wanted = set(only) if only is not None else None
    specs = [s for s in load_specs() if wanted is None or s.repo in wanted]
    if wanted is not None and (unknown := wanted - {s.repo for s in specs}):
        raise DemoBuildError(f"no demo repository named {', '.join(sorted(unknown))}")
    return {spec.repo: build_repo(spec, Path(dest)) for spec in specs}
