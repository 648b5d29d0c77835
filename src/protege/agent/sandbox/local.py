"""The local sandbox backend (`sandbox.backend: local`): bubblewrap on this host.

- `local` (this module): a private work tree of `<repos_dir>/<task.repo_dirname>` at base_commit (the
  clean checkout cached by `checkouts.py`, overlaid as root, else copied) and every
  command run under bubblewrap: no network (new net, pid, ipc, uts namespaces), a read-only view of
  only the system and Python directories, /proc/sys and the other kernel interfaces read-only, the work
  tree read-write at `workdir`, private /tmp and HOME, never host root (see `LocalSandbox`), all
  capabilities dropped, no_new_privs, the seccomp deny-list of `confinement.py`, limits on memory, CPU,
  processes and disk, a per-command timeout that kills the whole process group. Host-side reads are
  bounded (`read_limit_bytes`, `patch_limit_bytes`); a vanished work tree is a SandboxError.
  `allow_unsandboxed=true` runs the same commands without bubblewrap; that is the only way to get
  there: a missing or broken bubblewrap raises SandboxError.
- `docker` (`docker.py`) and `kubernetes` (`kubernetes.py`): the instance image, commands
  through the exec API, sharing this module's shell snippets.

Integrity (agents mine git history for the fix): inside every sandbox the repository holds no commit
after base_commit, no remote, no ref past base_commit, no reflog and no object only a later commit
reaches; the gold and test patches are never written anywhere the sandbox can read. Locally the cached
clone (`checkouts.clone_at_base`) fetches only base_commit (and lightweight tags that are its ancestors;
never a tag object, whose message may postdate the commit), so later objects are never copied; the
source repositories, the project checkout and the installed `protege` package (its demo data holds
gold patches) are not mounted. Container images get `docker.CLEANUP_SCRIPT` at start.

Simplifications: each command is its own process tree (background jobs end with the command, as in
mini-swe-agent); /tmp and HOME persist across commands of one sandbox because they are bind-mounted
scratch directories beside the tree. A sandbox lives in `$TMPDIR/protege-sbx-*` with a lock file its
owner holds; one whose owner died (kill -9) is removed, with its mount and cgroups, by the next sandbox
opened on the host.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import secrets
import select
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

from protege.agent.protocols import CommandResult, PatchTooLarge, SandboxError
from protege.agent.sandbox.checkouts import (
    Checkout,
    CheckoutCache,
    default_cache_dir,
    owned_paths,
    place_checkout,
)
from protege.agent.sandbox.checkouts import force_rmtree as _force_rmtree
from protege.agent.sandbox.common import DIFF_SCRIPT, READ_SCRIPT, WRITE_SCRIPT, OutputCap, raise_for_read
from protege.agent.sandbox.confinement import (
    Cgroup,
    chown_tree,
    hold_lock,
    mount_tmpfs,
    seccomp_fd,
    seccomp_program,
    sweep_stale,
    tree_bytes,
    unmount,
)
from protege.config import SandboxConfig
from protege.tasks import TaskInstance

log = logging.getLogger(__name__)

_READ_CHUNK = 1 << 16
_REAP_POLL_S = 0.02  # how often to look whether the leader exited (not a tunable: only latency)
_SANDBOX_HOME = "/home/agent"
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
_PREFIX = "protege-sbx-"  # not the old `protege-sandbox-`: those have no lock file to tell a live owner
_BOX = "box"  # under the sandbox root: the tree and scratch directories (the size-limited mount when root)
# Kernel interfaces bound read-only over the sandbox's own /proc (the unprivileged uid cannot write them
# anyway; this holds even if it could).
_KERNEL_INTERFACES = ("/proc/sys", "/proc/sysrq-trigger", "/proc/fs", "/proc/bus", "/proc/irq")
# Joins the sandbox's cgroups, then becomes bubblewrap: every process of the command is in them from the start.
_JOIN_CGROUP = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
_DROP_PRIVILEGES = ("--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--")
_ENV = {"LANG": "C.UTF-8", "TERM": "dumb", "PAGER": "cat", "GIT_PAGER": "cat", "PYTHONDONTWRITEBYTECODE": "1"}


def _child_pidfds(pid: int) -> list[int]:
    """pidfds of pid's direct children (bwrap's pid-1 of the sandbox runs in a session of its own)."""
    fds = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                fds.append(os.pidfd_open(int(stat_file.parent.name)))
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
    return fds


def _kill_group(pgid: int, leader_alive: bool, grace_s: float) -> None:
    """SIGKILL the group; if the leader was still alive, return once its children are gone too (or after grace_s).

    A sandbox's pid-1 dies with its parent (--die-with-parent) and takes the whole pid namespace with it,
    asynchronously: waiting for it means no process of a killed command outlives `run`.
    """
    children = _child_pidfds(pgid) if leader_alive else []
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace_s
    for fd in children:
        select.select([fd], [], [], max(0.0, deadline - time.monotonic()))  # readable once it exited
        os.close(fd)


def _wait_unreaped(pid: int, deadline: float) -> bool:
    # WNOWAIT leaves the leader a zombie, so its pid (= the group id) cannot be reused before killpg.
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(_REAP_POLL_S)
    return True


def _feed_stdin(pipe: object, data: bytes) -> None:
    try:
        pipe.write(data)  # type: ignore[attr-defined]
        pipe.close()  # type: ignore[attr-defined]
    except BrokenPipeError:
        return


def run_process(
    argv: list[str],
    *,
    cwd: str,
    env: dict[str, str],
    timeout: float,
    limit: int | None,
    stdin: bytes | None = None,
    grace_s: float,
    errors: str = "replace",
    pass_fds: tuple[int, ...] = (),
) -> CommandResult:
    """Run argv in its own session; at `timeout` (or once it exits) its whole process group is killed.

    Output (stdout and stderr interleaved) is read incrementally through an `OutputCap(limit)` and
    decoded as UTF-8 with `errors` (`surrogateescape` keeps file contents byte-exact). A killed
    command's processes are waited for up to `grace_s`. `pass_fds` are inherited by the command
    and closed here once it has started.
    """
    start = time.monotonic()
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        pass_fds=pass_fds,
    )
    for fd in pass_fds:
        os.close(fd)
    if stdin is not None:
        threading.Thread(target=_feed_stdin, args=(proc.stdin, stdin), daemon=True).start()
    cap, deadline, timed_out = OutputCap(limit, errors), start + timeout, False
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            if not sel.select(remaining):
                continue
            chunk = os.read(proc.stdout.fileno(), _READ_CHUNK)
            if not chunk:
                break
            cap.feed(chunk)
    if not timed_out:
        timed_out = not _wait_unreaped(proc.pid, deadline)
    _kill_group(proc.pid, timed_out, grace_s)  # also ends background jobs the command left behind
    proc.stdout.close()
    code = proc.wait()
    output, truncated = cap.text()
    return CommandResult(output, code, truncated, timed_out, time.monotonic() - start)


def _python_dirs() -> list[str]:
    """Directories a `python -m pytest` inside needs: the venv, its base, the interpreter's own prefix
    (those this process cannot open are left out: bubblewrap, run as this user, could not bind them)."""
    real_exe = Path(os.path.realpath(sys.executable))
    dirs = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, str(real_exe.parent.parent)]
    unique = dict.fromkeys(os.path.realpath(d) for d in dirs)
    return [d for d in unique if os.access(d, os.R_OK | os.X_OK)]


def _protected_paths(repos_dir: Path, cache_dir: str) -> list[str]:
    """Paths that hold gold patches or later history: the source repositories, the checkout cache and the
    installed protege package."""
    paths = [os.path.realpath(repos_dir), os.path.realpath(cache_dir or default_cache_dir())]
    spec = importlib.util.find_spec("protege")
    if spec is not None and spec.submodule_search_locations:
        paths += [os.path.realpath(p) for p in spec.submodule_search_locations]
    return paths


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _parent_dirs(path: str) -> list[str]:
    """bwrap arguments making path's parents traversable: those it creates itself would be private to
    root (e.g. /root above a pyenv install), which the sandbox's uid could not pass."""
    args = []
    for parent in reversed(Path(path).parents[:-1]):
        args += ["--perms", "0755", "--dir", str(parent)]
    return args


class _Resources:
    """What a sandbox holds on the host, released together (by close, garbage collection or exit)."""

    def __init__(self, root: Path, lock: int) -> None:
        self.root, self.lock = root, lock
        self.mounted = False
        self.cgroup: Cgroup | None = None
        self.checkout: Checkout | None = None
        self.placed = ""  # how the checkout is in the tree: "overlay", "copy" or "" (not yet)

    def release(self) -> None:
        if self.cgroup is not None:
            self.cgroup.remove()
        if self.placed == "overlay":
            unmount(self.root / _BOX / "testbed")
        if self.mounted:
            unmount(self.root / _BOX)
        _force_rmtree(self.root)
        if self.checkout is not None:
            self.checkout.release()
        os.close(self.lock)


class LocalSandbox:
    """The task's repository in a private work tree; commands under bubblewrap (or, opted in, bare).

    Run by root, every command drops to an unprivileged host uid of its own (`uid_base` + a random
    offset) with no capabilities and no_new_privs, inside the sandbox's cgroup (memory and pids, where
    this host allows one); the tree and scratch directories live on a tmpfs of `disk_limit_mb`. Run by
    another user, commands run as that user, with per-process limits and a size check of the tree after
    every command. Either way: a seccomp deny-list, read-only kernel interfaces, RLIMIT_AS/CPU/NPROC/FSIZE.
    """

    def __init__(self, cfg: SandboxConfig, task: TaskInstance, repos_dir: str | Path) -> None:
        self.cfg, self.task = cfg, task
        self.what = what = f"sandbox for {task.instance_id}"
        bwrap = None if cfg.allow_unsandboxed else shutil.which(cfg.bwrap_path)
        if bwrap is None and not cfg.allow_unsandboxed:
            raise SandboxError(
                f"{what}: bubblewrap not found at '{cfg.bwrap_path}' (install `bubblewrap`, set sandbox.bwrap_path, "
                "or opt into running commands unisolated with sandbox.allow_unsandboxed=true)"
            )
        sweep_stale(Path(tempfile.gettempdir()), _PREFIX, _BOX, _force_rmtree)
        self._root = Path(tempfile.mkdtemp(prefix=_PREFIX))
        self._held = _Resources(self._root, hold_lock(self._root))
        self._cleanup = weakref.finalize(self, self._held.release)
        self._box = self._root / _BOX
        self._tree = self._box / "testbed"
        self._uid = cfg.uid_base + secrets.randbelow(cfg.uid_count) if bwrap and os.geteuid() == 0 else None
        self._seccomp: bytes | None = None
        try:
            self._box.mkdir()
            if self._uid is not None:
                why = mount_tmpfs(self._box, cfg.disk_limit_mb, 0, 0)
                self._held.mounted = not why
                if why:
                    log.warning(
                        "%s: no size-limited tmpfs (%s); checking the tree's size after each command",
                        what,
                        why,
                    )
            scratch_tmp, scratch_home = self._box / "tmp", self._box / "home"
            scratch_tmp.mkdir()
            scratch_home.mkdir()
            self._place_checkout(Path(repos_dir) / task.repo_dirname, what)
            if bwrap is None:
                log.warning("%s: running commands WITHOUT isolation (sandbox.allow_unsandboxed=true)", what)
                self.workdir, self._cwd = str(self._tree), str(self._tree)
                self._prefix: list[str] = []
                self._env = {**_ENV, "PATH": os.environ.get("PATH", ""), "HOME": str(scratch_home)}
                self._env["TMPDIR"] = str(scratch_tmp)
            else:
                self._confine(what)
                self.workdir, self._cwd = cfg.workdir, "/"
                self._prefix = self._bwrap_prefix(bwrap, scratch_tmp, scratch_home, Path(repos_dir))
                self._env = {**_ENV, "PATH": self._path(), "HOME": _SANDBOX_HOME, "TMPDIR": "/tmp"}
                self._probe(what)
        except BaseException:
            self.close()
            raise

    def _place_checkout(self, source: Path, what: str) -> None:
        """The cached clean checkout at base_commit (built on first use) overlaid or copied at the tree."""
        cfg = self.cfg
        cache = CheckoutCache(
            Path(cfg.checkout_cache_dir or default_cache_dir()),
            cfg.checkout_cache_entries,
            cfg.setup_timeout_s,
        )
        self._held.checkout = checkout = cache.acquire(source, self.task.base_commit, what)
        self.base_commit = checkout.sha
        self.checkout_built = checkout.built
        self._held.placed = place_checkout(checkout, self._box, self._tree, overlay=self._held.mounted)

    def _confine(self, what: str) -> None:
        """The uid owns the tree; the cgroup and the seccomp filter are made once per sandbox."""
        if self._uid is not None:
            if self._held.placed == "overlay":  # the overlay's lower files stay root's (and a+rw)
                for path in (self._box, *owned_paths(self._tree)):
                    os.lchown(path, self._uid, self._uid)
                for scratch in ("tmp", "home"):
                    chown_tree(self._box / scratch, self._uid, self._uid)
            else:
                chown_tree(self._box, self._uid, self._uid)
        memory = self.cfg.memory_limit_mb * 1024 * 1024
        self._held.cgroup, why = Cgroup.create(self._root.name, memory, self.cfg.max_processes)
        if why:
            log.info("%s: per-process memory and process limits only (%s)", what, why)
        if self.cfg.seccomp:
            self._seccomp = seccomp_program()

    def _bwrap_prefix(self, bwrap: str, tmp: Path, home: Path, repos_dir: Path) -> list[str]:
        if self._uid is None:  # bubblewrap makes a user namespace whose only uid is ours (not root)
            args = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--cap-drop", "ALL"]
        else:  # as root: no user namespace (its only uid would map to host root); setpriv drops to _uid
            args = [
                bwrap,
                "--unshare-ipc",
                "--unshare-pid",
                "--unshare-net",
                "--unshare-uts",
                "--unshare-cgroup-try",
            ]
        args += ["--die-with-parent", "--new-session"]
        bound: list[str] = []
        for path in _SYSTEM_DIRS:
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                args += ["--ro-bind", path, path]
                bound.append(path)
        args += ["--dev", "/dev", "--proc", "/proc"]
        for path in _KERNEL_INTERFACES:
            args += ["--ro-bind-try", path, path]
        args += ["--bind", str(tmp), "/tmp", *_parent_dirs(_SANDBOX_HOME), "--bind", str(home), _SANDBOX_HOME]
        for path in _python_dirs():
            if not any(_under(path, b) for b in bound):
                args += [*_parent_dirs(path), "--ro-bind", path, path]
                bound.append(path)
        if os.path.realpath(sys.prefix) != sys.prefix and not any(_under(sys.prefix, b) for b in bound):
            # a venv reached through a symlink: the same path inside, so PATH and sys.prefix match the host's
            args += _parent_dirs(sys.prefix) + ["--symlink", os.path.realpath(sys.prefix), sys.prefix]
        # e.g. a non-editable install inside the venv
        for secret in _protected_paths(repos_dir, self.cfg.checkout_cache_dir):
            if any(_under(secret, b) for b in bound):
                args += ["--tmpfs", secret]
        args += ["--bind", str(self._tree), self.workdir, "--remount-ro", "/"]
        return [*args, "--chdir", self.workdir]

    def _path(self) -> str:
        venv_bin = [f"{sys.prefix}/bin"] if sys.prefix != sys.base_prefix else []
        return ":".join([*venv_bin, _SYSTEM_PATH])

    def _probe(self, what: str) -> None:
        result = self._exec("git rev-parse HEAD", [], self.cfg.setup_timeout_s, None)
        if result.exit_code != 0 or result.output.strip() != self.base_commit:
            raise SandboxError(
                f"{what}: bubblewrap could not start a sandbox (user namespaces disabled?): {result.output.strip()!r}; "
                "set sandbox.allow_unsandboxed=true to run commands without isolation"
            )

    def _argv(self, script: str, args: list[str], timeout: float) -> tuple[list[str], tuple[int, ...]]:
        # ulimit sets soft and hard limits, so the command cannot raise them again.
        cfg = self.cfg
        limits = f"ulimit -v {cfg.memory_limit_mb * 1024} && ulimit -t {math.ceil(cfg.cpu_limit * timeout)}"
        limits += f" && ulimit -f {cfg.disk_limit_mb * 1024}"
        if self._prefix:  # RLIMIT_NPROC counts per uid: only meaningful for the sandbox's own uid
            limits += f" && ulimit -u {cfg.max_processes}"
        argv = [
            "/bin/bash",
            "-c",
            limits + ' && exec /bin/bash -c "$@"',
            "protege-sandbox",
            script,
            "protege-sandbox",
            *args,
        ]
        if not self._prefix:
            return argv, ()
        if self._uid is not None:
            argv = ["setpriv", f"--reuid={self._uid}", f"--regid={self._uid}", *_DROP_PRIVILEGES, *argv]
        fds = (seccomp_fd(self._seccomp),) if self._seccomp is not None else ()
        argv = [*self._prefix, *(arg for fd in fds for arg in ("--seccomp", str(fd))), "--", *argv]
        if self._held.cgroup is not None:
            argv = [
                "/bin/sh",
                "-c",
                _JOIN_CGROUP,
                "protege-cgroup",
                *map(str, self._held.cgroup.procs),
                "--",
                *argv,
            ]
        return argv, fds

    def _exec(
        self,
        script: str,
        args: list[str],
        timeout: float,
        limit: int | None,
        stdin: bytes | None = None,
        errors: str = "replace",
    ) -> CommandResult:
        if not self._tree.is_dir():
            raise SandboxError(
                f"{self.what}: the work tree {self._tree} is gone (deleted from outside the sandbox?)"
            )
        argv, fds = self._argv(script, args, timeout)
        try:
            result = run_process(
                argv,
                cwd=self._cwd,
                env=self._env,
                timeout=timeout,
                limit=limit,
                stdin=stdin,
                errors=errors,
                grace_s=self.cfg.exec_grace_s,
                pass_fds=fds,
            )
        except OSError as err:
            for fd in fds:
                with contextlib.suppress(OSError):  # already closed if the command had started
                    os.close(fd)
            raise SandboxError(f"{self.what}: cannot run a command: {err}") from err
        if self._prefix and not self._held.mounted:
            used = tree_bytes(self._box)
            if used > self.cfg.disk_limit_mb * 1024 * 1024:
                raise SandboxError(
                    f"{self.what}: the work tree, /tmp and HOME use {used // 2**20} MiB, over "
                    f"sandbox.disk_limit_mb={self.cfg.disk_limit_mb}"
                )
        return result

    def run(self, command: str, timeout: float | None = None) -> CommandResult:
        """Run a bash command in workdir; output capped at output_limit_chars, killed at the timeout."""
        return self._exec(command, [], timeout or self.cfg.command_timeout_s, self.cfg.output_limit_chars)

    def read_file(self, path: str) -> str:
        """Whole file as the sandbox sees it (relative to workdir); FileNotFoundError/IsADirectoryError/OSError,
        the last also for a file over `read_limit_bytes` (refused before it is read)."""
        limit = self.cfg.read_limit_bytes
        result = self._exec(
            READ_SCRIPT, [path, str(limit)], self.cfg.command_timeout_s, limit, errors="surrogateescape"
        )
        if result.truncated:  # it grew past the limit after the size check
            raise OSError(f"{path}: over the limit of {limit} bytes read back from the sandbox")
        return raise_for_read(path, result)

    def write_file(self, path: str, content: str) -> None:
        """Create or replace a file (parents created) as the sandbox sees it; OSError naming the path."""
        data = content.encode(errors="surrogateescape")
        result = self._exec(
            WRITE_SCRIPT, [path], self.cfg.command_timeout_s, self.cfg.output_limit_chars, data
        )
        if result.exit_code != 0:
            raise OSError(f"{path}: {result.output.strip()}")

    def diff(self) -> str:
        """`git diff` of the work tree against base_commit, new files included, text only; PatchTooLarge
        past `patch_limit_bytes` (the host never holds more than about that much of it)."""
        limit = self.cfg.patch_limit_bytes
        result = self._exec(DIFF_SCRIPT, [self.base_commit], self.cfg.setup_timeout_s, limit)
        if result.exit_code != 0:
            raise SandboxError(f"diff in {self.what} failed: {result.output.strip()[-2000:]}")
        if result.truncated:
            raise PatchTooLarge(f"the patch is over sandbox.patch_limit_bytes={limit} bytes")
        return result.output

    def close(self) -> None:
        """Remove the work tree and scratch directories, their mount and cgroup (idempotent)."""
        self._cleanup()

    def __enter__(self) -> LocalSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
