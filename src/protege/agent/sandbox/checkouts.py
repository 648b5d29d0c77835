"""Clean checkouts at base_commit, built once per (source repository, base_commit), placed cheaply in sandboxes.

A sandbox used to clone its repository (`git fetch` of base_commit's history over the pack protocol, then a
checkout): linear in the repository's files, 7 s for 10k files, paid by every episode and every grading.
Now `CheckoutCache.acquire` builds that same clone once into `sandbox.checkout_cache_dir` (or finds it there)
and `place_checkout` puts it in the sandbox:
- as root with the sandbox's size-limited tmpfs: an overlay mount whose lower layer is the cached checkout
  and whose upper layer lives on that tmpfs, so opening costs a mount, whatever the repository's size. The
  kernel copies a file up before its first write (as the mounting root, whoever writes): nothing done in
  the sandbox reaches the cache, and what it writes counts against `disk_limit_mb`. The cached files are
  owned by root and mode a+rw (directories a+rwx, executable bits kept: git records only those), so the
  sandbox's unprivileged uid can write them through the overlay; it owns the tree's top and `.git`, which
  is what git's ownership check looks at.
- otherwise (not root, or the overlay refused): a copy, `cp -a --reflink=auto` (a reflink where the file
  system has them, a plain copy elsewhere). Never hardlinks: a sandbox writes its files in place (an
  editor's truncate-and-write, `>>`) and, running as the cache's owner when not root, could chmod a
  shared inode; a hardlink would be a write path into the cache.

Integrity is the clone's (`clone_at_base`): the cache entry holds base_commit's history only, no tag
object, note, other ref or reflog; for a task with `history: none` (SWE-smith: the bug commit's parent is
the fix) base_commit alone, a depth-1 clone. The cache directory is mode 0700 and never mounted into a sandbox
(it holds other tasks' base commits, some later than this one's).

Concurrency: a build takes an exclusive flock on `<entry>.build` and renames the finished clone into
place, so concurrent opens (threads or processes) build once and never see a half-built entry; a sandbox
holds a shared flock on `<entry>.lock` while it uses the entry, and eviction (least recently used past
`checkout_cache_entries`) only removes entries nobody holds. An entry is never refreshed: tags added to
the source later are not seen until it is evicted or removed by hand.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from protege.agent.protocols import SandboxError
from protege.agent.sandbox.confinement import mount_overlay

_FULL_SHA = re.compile(r"[0-9a-f]{40}")
_UPPER, _OVERLAY_WORK = ".upper", ".overlay-work"  # beside the tree in the sandbox's box


def force_rmtree(path: Path) -> None:
    """rm -rf whatever the permissions inside (the agent may have chmod-ed directories read-only)."""

    def make_writable(func: Callable[[str], object], target: str, _exc: object) -> None:
        os.chmod(os.path.dirname(target), stat.S_IRWXU)
        if os.path.isdir(target) and not os.path.islink(target):
            os.chmod(target, stat.S_IRWXU)
        func(target)

    if path.exists():
        shutil.rmtree(path, onerror=make_writable)


def _git(args: list[str], cwd: Path, timeout: float, what: str, check: bool = True) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise SandboxError(f"{what}: git {args[0]} took longer than {timeout:g}s") from err
    if check and done.returncode != 0:
        raise SandboxError(f"{what}: git {' '.join(args[:2])} failed: {done.stderr.strip()}")
    return done.stdout


def resolve_commit(source: Path, base_commit: str, timeout: float, what: str) -> str:
    """The full sha of base_commit in source; SandboxError naming what is missing."""
    if not source.is_dir():
        raise SandboxError(f"{what}: source repository {source} does not exist (sandbox.repos_dir?)")
    sha = _git(
        ["rev-parse", "--verify", "--quiet", f"{base_commit}^{{commit}}"], source, timeout, what, check=False
    ).strip()
    if not sha:
        raise SandboxError(f"{what}: base_commit {base_commit} is not in {source}")
    return sha


def clone_at_base(
    source: Path, base_commit: str, tree: Path, timeout: float, what: str, history: str = "full"
) -> str:
    """Make `tree` a fresh repository holding only base_commit's history, checked out (detached) there;
    with `history="none"` base_commit alone (a shallow clone of depth 1: no parent, no tag, no older object).

    Returns the full sha. Only base_commit and lightweight tags that are its ancestors are fetched (over
    the pack protocol, so nothing is hard-linked or shared), hence later commits' objects never arrive.
    Annotated tags are never copied: a tag object can be written at any time after its commit, and its
    message may describe the fix.
    """
    sha = resolve_commit(source, base_commit, timeout, what)
    refs = _git(
        ["for-each-ref", "--merged", sha, "--format=%(objecttype) %(refname)", "refs/tags"],
        source,
        timeout,
        what,
    ).splitlines()
    tags = [ref.split(" ", 1)[1] for ref in refs if ref.startswith("commit ")] if history == "full" else []
    tree.mkdir(parents=True)
    _git(["init", "--quiet", "--template="], tree, timeout, what)
    upload = "git -c uploadpack.allowAnySHA1InWant=true upload-pack"
    refspecs = [sha, *(f"{tag}:{tag}" for tag in tags)]
    _git(
        [
            "fetch",
            "--quiet",
            "--no-tags",
            *(["--depth=1"] if history == "none" else []),
            "--upload-pack",
            upload,
        ]
        + [source.resolve().as_uri(), *refspecs],
        tree,
        timeout,
        what,
    )
    _git(["-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", sha], tree, timeout, what)
    _git(["config", "core.logAllRefUpdates", "false"], tree, timeout, what)
    force_rmtree(tree / ".git" / "logs")
    (tree / ".git" / "FETCH_HEAD").unlink(missing_ok=True)
    return sha


def _open_to_all(tree: Path) -> None:
    """Directories a+rwx, files a+rw (executable bits as they were): any sandbox uid may write through an
    overlay (the writes land in its upper layer); git's view of the tree (it records only +x) is unchanged."""
    for dirpath, dirnames, filenames in os.walk(tree):
        os.chmod(dirpath, 0o777)
        for name in filenames:
            path = os.path.join(dirpath, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode):
                os.chmod(path, stat.S_IMODE(mode) | 0o666)
        for name in dirnames:
            if os.path.islink(os.path.join(dirpath, name)):
                dirnames.remove(name)


@dataclass
class Checkout:
    """A cached clean checkout, held (shared flock) until `release`."""

    tree: Path
    sha: str
    built: bool
    """True when this acquire built the entry (a cache miss)."""
    _lock: int

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._lock)


class CheckoutCache:
    """Clean checkouts at base_commit under `directory`, at most `max_entries` kept (see the module doc)."""

    def __init__(self, directory: Path, max_entries: int, timeout: float) -> None:
        self.directory, self.max_entries, self.timeout = directory, max_entries, timeout

    def _entry_name(self, source: Path, sha: str, history: str) -> str:
        where = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:12]
        return f"{source.name}-{where}-{sha}" + ("-alone" if history == "none" else "")

    def acquire(self, source: Path, base_commit: str, what: str, history: str = "full") -> Checkout:
        """The entry for (source, base_commit, history), built if missing; raises SandboxError naming what is
        wrong."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if _FULL_SHA.fullmatch(base_commit):
            sha = base_commit  # the entry's name proves it was built from this commit; no git call
        else:
            sha = resolve_commit(source, base_commit, self.timeout, what)
        name = self._entry_name(source, sha, history)
        entry = self.directory / name
        while True:
            built = False
            if not entry.is_dir():
                built = self._build(source, sha, entry, what, history)
            lock = os.open(self.directory / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(lock, fcntl.LOCK_SH)
            if entry.is_dir():  # else evicted between the build and the lock: build again
                os.utime(self.directory / f"{name}.lock")  # least recently used goes first
                return Checkout(entry, sha, built, lock)
            os.close(lock)

    def _build(self, source: Path, sha: str, entry: Path, what: str, history: str) -> bool:
        build_lock = os.open(entry.with_name(f"{entry.name}.build"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(build_lock, fcntl.LOCK_EX)
            if entry.is_dir():  # another thread or process built it while we waited
                return False
            partial = entry.with_name(f".{entry.name}.partial")
            force_rmtree(partial)  # a builder that died: it held the build lock we now hold
            clone_at_base(source, sha, partial, self.timeout, what, history)
            _open_to_all(partial)
            os.rename(partial, entry)
            # A rebuilt entry's lock file is as old as its previous life: it counts as used now.
            entry.with_name(f"{entry.name}.lock").touch(mode=0o600)
        finally:
            os.close(build_lock)
        self._evict(keep=entry)
        return True

    def _evict(self, keep: Path) -> None:
        """Remove the least recently used entries past max_entries that no sandbox holds, never `keep` (the
        entry just built, which its builder has not locked yet)."""
        entries = [
            p for p in self.directory.iterdir() if p.is_dir() and not p.name.startswith(".") and p != keep
        ]
        if len(entries) < self.max_entries:
            return

        def last_used(entry: Path) -> float:
            with contextlib.suppress(OSError):
                return entry.with_name(f"{entry.name}.lock").stat().st_mtime
            return 0.0

        for entry in sorted(entries, key=last_used)[: len(entries) + 1 - self.max_entries]:
            lock = os.open(entry.with_name(f"{entry.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(lock)
                continue  # in use by a live sandbox
            try:
                doomed = entry.with_name(f".{entry.name}.evicted-{os.getpid()}-{threading.get_ident()}")
                try:
                    os.rename(entry, doomed)
                except FileNotFoundError:
                    continue  # another evictor listed it too and removed it first
                force_rmtree(doomed)
            finally:
                os.close(lock)


def default_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"protege-checkouts-{os.geteuid()}"


def place_checkout(checkout: Checkout, box: Path, tree: Path, overlay: bool) -> str:
    """Put the checkout at `tree` (inside the sandbox's `box`): an overlay when `overlay` (root, box on the
    sandbox's tmpfs) and the kernel allows it, else a copy. Returns "overlay" or "copy"."""
    if overlay:
        upper, work = box / _UPPER, box / _OVERLAY_WORK
        upper.mkdir()
        work.mkdir()
        tree.mkdir()
        if not mount_overlay(checkout.tree, upper, work, tree):
            return "overlay"
        tree.rmdir()
        upper.rmdir()
        work.rmdir()
    done = subprocess.run(
        ["cp", "-a", "--reflink=auto", "--", str(checkout.tree), str(tree)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SandboxError(
            f"cannot copy the checkout {checkout.tree} into the sandbox: {done.stderr.strip()}"
        )
    return "copy"


def owned_paths(tree: Path) -> list[Path]:
    """What the sandbox's uid must own in an overlaid tree: its top and `.git` (git's ownership check);
    chown-ing more would copy every file up."""
    return [tree.parent / _UPPER, tree, tree / ".git"]
