"""Repositories of a chosen size for the benchmarks (not a benchmark itself: no `bench_` prefix).

- `filler_repo(dest, files)`: a git repository of `files` small Python modules in 100 packages, one commit.
- `with_filler(task, repos_dir, dest, files)`: a demo task moved onto a base commit that adds `files` filler
  modules (under `filler/`) to its repository, so the task's own tests, patches and grading run unchanged
  on a SWE-bench-sized tree (a typical SWE-bench repository has about 10k files).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

_GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@bench",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@bench",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
}


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=repo, env={**os.environ, **_GIT_ENV}, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def _write_filler(root: Path, files: int) -> None:
    for i in range(files):
        package = root / f"pkg{i % 100:02d}"
        package.mkdir(parents=True, exist_ok=True)
        (package / f"mod{i:05d}.py").write_text(
            f'"""Filler module {i}."""\n\n\ndef f{i}(x):\n    return x + {i}\n'
        )


def filler_repo(dest: Path, files: int) -> str:
    """A repository at dest holding `files` files; returns its one commit's sha."""
    dest.mkdir(parents=True)
    _git(dest, "init", "-q")
    _write_filler(dest, files)
    _git(dest, "add", "-A")
    _git(dest, "commit", "-qm", f"{files} files")
    return _git(dest, "rev-parse", "HEAD")


def with_filler(task: Any, repos_dir: Path, dest: Path, files: int) -> Any:
    """`task` on a copy of its repository whose new base commit adds `files` modules under filler/."""
    repo = dest / task.repo_dirname
    subprocess.run(
        ["git", "clone", "-q", "--no-local", str(repos_dir / task.repo_dirname), str(repo)], check=True
    )
    _git(repo, "checkout", "-q", "--detach", task.base_commit)
    _write_filler(repo / "filler", files)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", f"add {files} filler modules")
    base = _git(repo, "rev-parse", "HEAD")
    update = {
        "base_commit": base,
        "environment_setup_commit": base,
        "eval_script": task.eval_script.replace(task.base_commit, base),
    }
    return task.model_copy(update=update)
