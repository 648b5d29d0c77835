"""The checkout cache behind the local sandbox (protege.agent.sandbox.checkouts): built once per (repository,
base_commit), reused by later opens, never written through by a sandbox, holding base_commit's history only."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from protege.agent.sandbox import open_sandbox
from protege.agent.sandbox.checkouts import CheckoutCache
from protege.config import SandboxConfig
from tests.agent.test_sandbox_escape import GOLD, NOTE, TAG_MESSAGE, _git, _make_repo, _task

BWRAP = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
# As root the tree is an overlay on the sandbox's tmpfs; unsandboxed (and as any other user) it is a copy.
PLACEMENTS = {"overlay" if os.geteuid() == 0 else "copy": {}, "copy": {"allow_unsandboxed": True}}


@pytest.fixture
def repos(tmp_path: Path) -> tuple[Path, str]:
    return tmp_path / "repos", _make_repo(tmp_path / "repos" / "owner__calc")


def _cfg(tmp_path: Path, **change: object) -> SandboxConfig:
    return SandboxConfig(checkout_cache_dir=str(tmp_path / "cache"), **change)


def _fingerprint(tree: Path) -> dict[str, tuple[int, str]]:
    """Every path under tree with its mode and content hash (symlinks by target)."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in (*dirnames, *filenames):
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            if os.path.islink(path):
                digest = os.readlink(path)
            elif os.path.isfile(path):
                digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            else:
                digest = "dir"
            seen[os.path.relpath(path, tree)] = (info.st_mode, digest)
    return seen


@BWRAP
def test_second_open_reuses_the_cached_checkout(tmp_path: Path, repos: tuple[Path, str]):
    repos_dir, base = repos
    cfg = _cfg(tmp_path)
    with open_sandbox(cfg, _task(base), repos_dir) as first:
        assert first.checkout_built  # type: ignore[attr-defined]
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_dir())
    with open_sandbox(cfg, _task(base), repos_dir) as second:
        assert not second.checkout_built  # type: ignore[attr-defined]
        assert second.run("git rev-parse HEAD").output.strip() == base
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()) == entries
    assert len(entries) == 1 and entries[0].endswith(base)


@BWRAP
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_writes_in_a_sandbox_reach_neither_the_cache_nor_the_next_sandbox(
    tmp_path: Path, repos: tuple[Path, str], placement: str
):
    """In-place writes (append, truncate, chmod of a shared file), deletions and a commit into .git: a
    hardlinked or shared inode would carry any of them into the cache."""
    repos_dir, base = repos
    cfg = _cfg(tmp_path, **PLACEMENTS[placement])
    with open_sandbox(cfg, _task(base), repos_dir) as sandbox:
        assert sandbox._held.placed == placement  # type: ignore[attr-defined]
        entry = sandbox._held.checkout.tree  # type: ignore[attr-defined]
        before = _fingerprint(entry)
        vandal = (
            "echo BROKEN >> calc.py && truncate -s 0 README.md && chmod 700 calc.py && "
            "git -c user.name=a -c user.email=a@a commit -qam vandal && rm -rf .git/refs/tags && "
            "for f in .git/objects/*/* .git/index .git/HEAD; do chmod u+w $f; echo junk >> $f; done; echo DONE"
        )
        assert sandbox.run(vandal).output.strip().endswith("DONE")
        assert "BROKEN" in sandbox.read_file("calc.py")
    assert _fingerprint(entry) == before
    with open_sandbox(cfg, _task(base), repos_dir) as again:
        assert not again.checkout_built  # type: ignore[attr-defined]
        state = again.run("git status --short; git rev-parse HEAD; git tag; cat calc.py README.md").output
    assert state == f"{base}\nv0.1\ndef add(a, b):\n    return a - b\ncalc\n"


@BWRAP
def test_only_base_commit_history_is_in_the_cache_and_the_sandbox(tmp_path: Path, repos: tuple[Path, str]):
    repos_dir, base = repos
    with open_sandbox(_cfg(tmp_path), _task(base), repos_dir) as sandbox:
        seen = sandbox.run(
            "git log --all --format=%s | sort; git for-each-ref --format='%(refname)'; "
            f"git cat-file --batch-all-objects --batch | grep -caF -e {GOLD} -e {TAG_MESSAGE} -e {NOTE}"
        ).output
        entry = sandbox._held.checkout.tree  # type: ignore[attr-defined]
    assert seen.splitlines() == ["base", "c1", "refs/tags/v0.1", "0"]
    objects = subprocess.run(
        ["git", "cat-file", "--batch-all-objects", "--batch"], cwd=entry, capture_output=True, check=True
    ).stdout
    assert all(secret.encode() not in objects for secret in (GOLD, TAG_MESSAGE, NOTE))
    assert not (entry / ".git" / "logs").exists()


@BWRAP
def test_concurrent_opens_of_a_missing_checkout_build_it_once(tmp_path: Path, repos: tuple[Path, str]):
    repos_dir, base = repos
    cfg = _cfg(tmp_path)
    start, built, heads = threading.Barrier(4), [], []

    def open_one() -> None:
        start.wait()
        with open_sandbox(cfg, _task(base), repos_dir) as sandbox:
            built.append(sandbox.checkout_built)  # type: ignore[attr-defined]
            heads.append(sandbox.run("git rev-parse HEAD").output.strip())

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(built) == [False, False, False, True]
    assert heads == [base] * 4
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")] == []


def test_eviction_removes_the_least_recently_used_entry_that_no_sandbox_holds(tmp_path: Path):
    source = tmp_path / "repos" / "owner__calc"
    _make_repo(source)
    first, second, third = _git(source, "rev-list", "--reverse", "HEAD").splitlines()
    cache = CheckoutCache(tmp_path / "cache", max_entries=1, timeout=60)
    held = cache.acquire(source, first, "test")
    cache.acquire(source, second, "test").release()
    assert held.tree.is_dir()  # over the limit, but in use
    held.release()
    latest = cache.acquire(source, third, "test")
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()] == [latest.tree.name]
    latest.release()


def test_an_entry_evicted_earlier_is_rebuilt_and_kept_when_the_cache_is_full(tmp_path: Path):
    # Its lock file outlives an eviction; a rebuilt entry must not count as used when it was first evicted,
    # or its own builder evicts it again, round after round (an eval hung on this once past 256 entries).
    source = tmp_path / "repos" / "owner__calc"
    _make_repo(source)
    first, second, _ = _git(source, "rev-list", "--reverse", "HEAD").splitlines()
    cache = CheckoutCache(tmp_path / "cache", max_entries=1, timeout=60)
    cache.acquire(source, first, "test").release()
    cache.acquire(source, second, "test").release()  # evicts the first
    again: list = []
    worker = threading.Thread(target=lambda: again.append(cache.acquire(source, first, "test")), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert again, "acquiring an entry evicted earlier did not return"
    assert again[0].built
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()] == [again[0].tree.name]
    again[0].release()


def test_an_entry_another_evictor_removed_first_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Two evictors (threads of one eval, or two processes) can list the same stale entry; the second one to
    # take its lock finds it gone, and that must not fail the episode that happened to trigger eviction.
    from protege.agent.sandbox import checkouts

    source = tmp_path / "repos" / "owner__calc"
    _make_repo(source)
    first, second, _ = _git(source, "rev-list", "--reverse", "HEAD").splitlines()
    cache = CheckoutCache(tmp_path / "cache", max_entries=1, timeout=60)
    cache.acquire(source, first, "test").release()
    rename = os.rename

    def raced(src: object, dst: object) -> None:
        if ".evicted-" in str(dst):
            shutil.rmtree(src)  # the other evictor got there between our listing and our rename
        rename(src, dst)

    monkeypatch.setattr(checkouts.os, "rename", raced)
    kept = cache.acquire(source, second, "test")  # builds the second entry, then evicts the first
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()] == [kept.tree.name]
    kept.release()


@BWRAP
def test_history_none_keeps_base_commit_alone_with_no_parent_to_read(tmp_path: Path, repos: tuple[Path, str]):
    # A SWE-smith-style task: base_commit's parent is the fixed code, so the sandbox must not hold it.
    repos_dir, base = repos
    task = _task(base).model_copy(update={"history": "none"})  # type: ignore[attr-defined]
    with open_sandbox(_cfg(tmp_path), task, repos_dir) as sandbox:
        log = sandbox.run("git log --all --format=%s; git for-each-ref --format='%(refname)'").output
        parent = sandbox.run("git show --stat HEAD^").exit_code
        assert sandbox.run("git rev-parse HEAD").output.strip() == base
        entry = sandbox._held.checkout.tree  # type: ignore[attr-defined]
    assert log.splitlines() == ["base"] and parent != 0
    objects = subprocess.run(
        ["git", "cat-file", "--batch-all-objects", "--batch-check"],
        cwd=entry,
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert sum(line.split()[1] == "commit" for line in objects.splitlines()) == 1
    with open_sandbox(_cfg(tmp_path), _task(base), repos_dir) as full:  # the same commit, full history
        assert full.run("git log --format=%s").output.split() == ["base", "c1"]


def test_container_cleanup_with_history_none_cuts_the_history_at_base(tmp_path: Path):
    from protege.agent.sandbox.docker import CLEANUP_SCRIPT

    base = _make_repo(tmp_path / "image")
    repo = tmp_path / "image"
    _git(repo, "checkout", "-q", "--detach", base)
    done = subprocess.run(
        ["bash", "-c", CLEANUP_SCRIPT, "cleanup", base, "none"], cwd=repo, capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.strip() == base, done.stderr
    commits = subprocess.run(
        ["git", "cat-file", "--batch-all-objects", "--batch-check"], cwd=repo, capture_output=True, text=True
    ).stdout
    assert sum(line.split()[1] == "commit" for line in commits.splitlines()) == 1
    assert subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD^"], cwd=repo).returncode != 0
    assert _git(repo, "for-each-ref", "--format=%(refname)") == ""
