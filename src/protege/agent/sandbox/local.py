"""The local sandbox backend (`sandbox.backend: local`): bubblewrap on this host.

- `local` (this module): a private work tree of `<repos_dir>/<task.repo_dirname>` at base_commit (the
  clean checkout cached by `checkouts.py`, overlaid as root, else copied) and every
  command run under bubblewrap: no network (new net, pid, ipc, uts namespaces), a read-only view of
  only the system and Python directories, /proc/sys and the other kernel interfaces read-only, the work
  tree read-write at `workdir`, the task's environment read-only (its venv first on PATH, built once per
  spec by protege.environments, the repository installed into the episode where the spec asks), private
  /tmp and HOME, never host root (see `LocalSandbox`), all
  capabilities dropped, no_new_privs, the seccomp deny-list of `confinement.py`, limits on memory, CPU,
  processes and disk, a per-command timeout that kills everything the command started; one persistent
  shell per sandbox (below). Host-side reads are bounded (`read_limit_bytes`, `patch_limit_bytes`); a
  vanished work tree is a SandboxError.
  `allow_unsandboxed=true` runs the same commands without bubblewrap; that is the only way to get
  there: a missing or broken bubblewrap raises SandboxError.
- `docker` (`docker.py`) and `kubernetes` (`kubernetes.py`): the instance image, commands
  through the exec API, sharing this module's shell snippets.

Integrity (agents mine git history for the fix): inside every sandbox the repository holds no commit
after base_commit, no remote, no ref past base_commit, no reflog and no object only a later commit
reaches; the gold and test patches are never written anywhere the sandbox can read. Locally the cached
clone (`checkouts.clone_at_base`) fetches only base_commit (and lightweight tags that are its ancestors; never a tag object, whose message
may postdate the commit), so later objects are never copied; the
source repositories, the project checkout and the installed `protege` package (its demo data holds
gold patches) are not mounted. Container images get `docker.CLEANUP_SCRIPT` at start.

The persistent shell (SWE-agent keeps one shell session per episode through SWE-ReX; so does this
backend, differently): a command server (`shell_server.py`) starts with the sandbox, inside the same
bubblewrap, uid, cgroup, seccomp filter and limits, and every command of the episode is one round trip
to it (`shell.py` is the host's end). Opening a sandbox does not wait for the server to boot: its first
job, a probe (is the tree there, does git run?), is answered at the first operation, which raises
SandboxError if bubblewrap could not start; in a rollout the boot overlaps the policy's first turn.
Each command is `bash -c` in a process of its own (a new session, a CPU limit of its own), so it can be
timed out and killed without losing the shell.
- What persists between commands, as in SWE-agent's session: the working directory (`cd`, `cd -`) and
  exported environment variables (`export`, `unset`, what `source venv/bin/activate` exports).
- What does not (SWE-ReX's single interactive bash keeps these; here they end with the command): shell
  variables that are not exported, functions, aliases, `set` options, and background jobs: once a
  command returns, every process it started is killed (as in mini-swe-agent).
- A command killed at its timeout (with everything it started) leaves the directory and environment as
  they were before it; the shell serves on. So does one that replaces the EXIT trap or `exec`s.
- If the server itself dies (killed from inside, or by the memory limit), that command's output says so
  and the next command starts a fresh server in the work tree with the initial environment.
- File reads and writes and the editor's edits are done by the server itself (one round trip, no
  process); they and the diff run in the work tree with the initial environment, whatever the agent's
  `cd` or `export`.
- Unsandboxed (`allow_unsandboxed`), there is no pid namespace to sweep: a command's process group is
  killed, a daemon that left it (setsid) is not.
/tmp and HOME persist across commands of one sandbox because they are bind-mounted scratch directories
beside the tree. A sandbox lives in `$TMPDIR/protege-sbx-*` with a lock file its owner holds; one whose
owner died (kill -9) is removed, with its mount and cgroups, by the next sandbox opened on the host.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import marshal
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable
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
from protege.agent.sandbox.common import DIFF_SCRIPT, OutputCap
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
from protege.agent.sandbox.shell import ShellClient, ShellGone, server_command
from protege.config import SandboxConfig
from protege.environments import (
    EnvironmentBuildError,
    EnvironmentSpecError,
    LocalEnvironment,
    environment_for,
    episode_setup_script,
    find_uv,
    sandbox_variables,
)
from protege.tasks import TaskInstance

log = logging.getLogger(__name__)

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


def _python_dirs() -> list[str]:
    """Directories a `python -m pytest` inside needs: the venv, its base, the interpreter's own prefix
    (those this process cannot open are left out: bubblewrap, run as this user, could not bind them)."""
    real_exe = Path(os.path.realpath(sys.executable))
    dirs = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, str(real_exe.parent.parent)]
    unique = dict.fromkeys(os.path.realpath(d) for d in dirs)
    return [d for d in unique if os.access(d, os.R_OK | os.X_OK)]


def _server_python() -> str:
    """An interpreter for the shell server that this user can run and the sandbox binds: the real one
    behind this process's (a venv's link may point into a home this user cannot enter), else the
    system's. `-I -S` needs only the standard library."""
    candidates = [os.path.realpath(sys.executable), shutil.which("python3", path=_SYSTEM_PATH)]
    usable = [c for c in candidates if c and os.access(c, os.X_OK)]
    if not usable:
        raise SandboxError(f"no Python interpreter this user can run for the sandbox's shell: {candidates}")
    return usable[0]


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
        self.shell: ShellClient | None = None
        self.checkout: Checkout | None = None
        self.placed = ""  # how the checkout is in the tree: "overlay", "copy" or "" (not yet)

    def release(self) -> None:
        if self.shell is not None:
            self.shell.close()
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
            self.environment = self._environment(Path(repos_dir))
            if bwrap is None:
                log.warning("%s: running commands WITHOUT isolation (sandbox.allow_unsandboxed=true)", what)
                self.workdir, self._cwd = str(self._tree), str(self._tree)
                self._prefix: list[str] = []
                path = os.environ.get("PATH", "")
                if self.environment is not None:
                    path = f"{self.environment.bin_dir}:{path}"
                self._env = {**_ENV, "PATH": path, "HOME": str(scratch_home), "TMPDIR": str(scratch_tmp)}
                self._env.update(sandbox_variables(self.environment, str(scratch_tmp)))
                episode_tmp = str(scratch_tmp)
            else:
                self._confine(what)
                self.workdir, self._cwd = cfg.workdir, "/"
                self._prefix = self._bwrap_prefix(bwrap, scratch_tmp, scratch_home, Path(repos_dir))
                self._env = {**_ENV, "PATH": self._path(), "HOME": _SANDBOX_HOME, "TMPDIR": "/tmp"}
                self._env.update(sandbox_variables(self.environment, "/tmp"))
                episode_tmp = "/tmp"
            self._held.shell = ShellClient(self._launcher(), cfg.exec_grace_s)
            self._start_shell(bwrap is not None)
            self._install(episode_tmp)  # through the shell: its first operation also checks the probe
        except BaseException:
            self.close()
            raise

    def _environment(self, repos_dir: Path) -> LocalEnvironment | None:
        """The task's environment (protege.environments), built on first use; None: protege's own."""
        try:
            self.environment_spec, env = environment_for(self.cfg.environments, self.task, repos_dir)
        except (EnvironmentBuildError, EnvironmentSpecError) as err:
            raise SandboxError(f"{self.what}: {err}") from err
        return env

    def _install(self, tmp: str) -> None:
        """The spec's pre-install and install lines, in this episode's copy (no network)."""
        script = episode_setup_script(self.environment_spec, self.environment, tmp)
        if not script:
            return
        result = self._exec(script, [], self.cfg.setup_timeout_s, self.cfg.output_limit_chars)
        if result.exit_code != 0:
            tail = " | ".join(result.output.strip().splitlines()[-3:])
            raise SandboxError(f"{self.what}: installing {self.environment_spec.label()} failed: {tail}")

    def _place_checkout(self, source: Path, what: str) -> None:
        """The cached clean checkout at base_commit (built on first use) overlaid or copied at the tree."""
        cfg = self.cfg
        cache = CheckoutCache(
            Path(cfg.checkout_cache_dir or default_cache_dir()),
            cfg.checkout_cache_entries,
            cfg.setup_timeout_s,
        )
        self._held.checkout = checkout = cache.acquire(source, self.task.base_commit, what, self.task.history)
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
        for path in _python_dirs() + self._environment_dirs():
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

    def _environment_dirs(self) -> list[str]:
        """The task's venv, the installation its interpreter comes from, and uv (for the editable install)."""
        env = self.environment
        if env is None:
            return []
        dirs = [str(env.path), str(env.base_python_dir)]
        if self.environment_spec.install_repo:
            dirs.append(os.path.dirname(find_uv()))
        return [os.path.realpath(d) for d in dirs]

    def _path(self) -> str:
        if self.environment is not None:
            return ":".join([str(self.environment.bin_dir), _SYSTEM_PATH])
        venv_bin = [f"{sys.prefix}/bin"] if sys.prefix != sys.base_prefix else []
        return ":".join([*venv_bin, _SYSTEM_PATH])

    def _start_shell(self, probe: bool) -> None:
        """Start the shell server without waiting for it; under bubblewrap its first job is a probe (is the
        tree there, does git run?) whose answer the first operation checks (SandboxError if wrong)."""
        operation = {"op": "run", "script": "git rev-parse HEAD", "args": [], "session": False}
        operation |= {"timeout": self.cfg.setup_timeout_s, "cpu_s": math.ceil(self.cfg.setup_timeout_s)}
        if not probe:
            operation |= {"script": "true"}
        check = functools.partial(_check_probe, self.what, self.base_commit if probe else "", self._root)
        assert self._held.shell is not None
        self._held.shell.send_ahead(
            operation, self.cfg.setup_timeout_s + 2 * self.cfg.exec_grace_s + 5, check
        )

    def _launcher(self) -> Callable[[], subprocess.Popen]:
        """What starts the shell server (again after it is lost); it holds no reference to the sandbox,
        so a dropped sandbox is still collected."""
        cfg = self.cfg
        # ulimit sets soft and hard limits, so nothing inside can raise them again; the CPU limit is per
        # command (the server sets it in each command's bash).
        limits = f"ulimit -v {cfg.memory_limit_mb * 1024} && ulimit -f {cfg.disk_limit_mb * 1024}"
        if self._prefix:  # RLIMIT_NPROC counts per uid: only meaningful for the sandbox's own uid
            limits += f" && ulimit -u {cfg.max_processes}"
        config = {"workdir": self.workdir, "contain": bool(self._prefix), "grace_s": cfg.exec_grace_s}
        server = [*server_command(_server_python()), marshal.dumps(config, 4).hex()]
        argv = ["/bin/bash", "-c", limits + ' && exec "$@"', "protege-sandbox", *server]
        head: list[str] = []
        if self._prefix:
            if self._uid is not None:
                argv = ["setpriv", f"--reuid={self._uid}", f"--regid={self._uid}", *_DROP_PRIVILEGES, *argv]
            if self._held.cgroup is not None:
                head = ["/bin/sh", "-c", _JOIN_CGROUP, "protege-cgroup", *map(str, self._held.cgroup.procs)]
                head.append("--")
            head += self._prefix
        log_path = self._root / "shell.log"  # the server's own stderr (outside the box: host only)
        return functools.partial(_start_server, head, argv, self._seccomp, self._cwd, self._env, log_path)

    def _request(self, operation: dict, blob: bytes, wait_s: float, cap: OutputCap) -> dict | None:
        """One operation on the shell server; None when the server was lost (killed, restarted next time)."""
        if not self._tree.is_dir():
            raise SandboxError(
                f"{self.what}: the work tree {self._tree} is gone (deleted from outside the sandbox?)"
            )
        assert self._held.shell is not None
        try:
            reply = self._held.shell.request(operation, blob, wait_s, cap.feed)
        except ShellGone as gone:
            log.warning("%s: %s (restarting it; see %s)", self.what, gone, self._root / "shell.log")
            return {"exit_code": -9, "timed_out": gone.deadline_passed, "lost": True}
        except OSError as err:
            raise SandboxError(f"{self.what}: cannot run a command: {err}") from err
        if self._prefix and not self._held.mounted:
            used = tree_bytes(self._box)
            if used > self.cfg.disk_limit_mb * 1024 * 1024:
                raise SandboxError(
                    f"{self.what}: the work tree, /tmp and HOME use {used // 2**20} MiB, over "
                    f"sandbox.disk_limit_mb={self.cfg.disk_limit_mb}"
                )
        return reply

    def _exec(
        self,
        script: str,
        args: list[str],
        timeout: float,
        limit: int | None,
        session: bool = False,
    ) -> CommandResult:
        """Run a bash script (its $1.. = args) through the shell; `session`: in the agent's persistent
        directory and environment (module docstring), else in workdir with the initial environment."""
        cap = OutputCap(limit)
        operation = {"op": "run", "script": script, "args": args, "timeout": timeout, "session": session}
        operation["cpu_s"] = math.ceil(self.cfg.cpu_limit * timeout)
        # the server kills at `timeout`, then waits up to exec_grace_s for the rest to die and to drain
        reply = self._request(operation, b"", timeout + 2 * self.cfg.exec_grace_s + 5, cap)
        if reply.get("lost"):
            cap.feed(
                f"\n[the sandbox's shell was killed; the next command starts a fresh one in {self.workdir} "
                "with the initial environment]\n".encode()
            )
        output, truncated = cap.text()
        return CommandResult(output, reply["exit_code"], truncated, reply.get("timed_out", False))

    def run(self, command: str, timeout: float | None = None) -> CommandResult:
        """Run a bash command in the agent's session (module docstring: what persists); output capped at
        output_limit_chars, killed with everything it started at the timeout."""
        started = time.monotonic()
        result = self._exec(
            command, [], timeout or self.cfg.command_timeout_s, self.cfg.output_limit_chars, session=True
        )
        result.duration_s = time.monotonic() - started
        return result

    def _file_request(self, operation: dict, blob: bytes = b"") -> tuple[str, dict]:
        """A file operation (read/write/edit), answered by the server itself: (decoded bytes, reply).
        A server lost during it is restarted and the operation tried once more."""
        for _ in range(2):
            cap = OutputCap(None, errors="surrogateescape")
            reply = self._request(operation, blob, self.cfg.command_timeout_s, cap)
            if not reply.get("lost"):
                return cap.text()[0], reply
        raise SandboxError(f"{self.what}: the sandbox's shell died twice during a file operation")

    def _raise_for(self, path: str, reply: dict) -> None:
        errors = {2: FileNotFoundError, 21: IsADirectoryError, 17: FileExistsError}
        if reply["exit_code"] != 0:  # 27: over the read limit, a plain OSError
            raise errors.get(reply["exit_code"], OSError)(f"{path}: {reply.get('error', '')}")

    def read_file(self, path: str) -> str:
        """Whole file as the sandbox sees it (relative to workdir); FileNotFoundError/IsADirectoryError/OSError,
        the last also for a file over `read_limit_bytes` (refused before it is read)."""
        text, reply = self._file_request({"op": "read", "path": path, "limit": self.cfg.read_limit_bytes})
        self._raise_for(path, reply)
        return text

    def read_path(self, path: str) -> tuple[str, str]:
        """("file", its text) or ("dir", its listing two levels deep without hidden entries); errors as read_file."""
        operation = {"op": "read", "path": path, "limit": self.cfg.read_limit_bytes, "listing": True}
        text, reply = self._file_request(operation)
        self._raise_for(path, reply)
        return reply.get("kind", "file"), text

    def write_file(self, path: str, content: str, exclusive: bool = False) -> None:
        """Create or replace a file (parents created) as the sandbox sees it; OSError naming the path,
        FileExistsError when `exclusive` and it exists."""
        operation = {"op": "write", "path": path, "exclusive": exclusive}
        _, reply = self._file_request(operation, content.encode(errors="surrogateescape"))
        self._raise_for(path, reply)

    def edit_file(self, path: str, old: str | None, new: str, line: int | None) -> tuple[str, bool]:
        """`shell_server.apply_edit` on the file, written back when it applies, in one round trip:
        (the text before, whether it was written). Errors as read_file and write_file."""
        operation = {"op": "edit", "path": path, "limit": self.cfg.read_limit_bytes}
        operation.update(old=old, new=new, line=line)
        text, reply = self._file_request(operation)
        self._raise_for(path, reply)
        return text, bool(reply.get("applied"))

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


def _check_probe(what: str, base_commit: str, root: Path, output: bytes, reply: dict | None) -> None:
    """SandboxError unless the probe printed base_commit (nothing to check unsandboxed: base_commit "")."""
    if not base_commit:
        return
    if reply is None or reply.get("exit_code") != 0 or output.decode(errors="replace").strip() != base_commit:
        said = (root / "shell.log").read_text(errors="replace").strip()[-1000:] or output.decode(
            errors="replace"
        )
        raise SandboxError(
            f"{what}: bubblewrap could not start a sandbox (user namespaces disabled?): {said.strip()!r}; "
            "set sandbox.allow_unsandboxed=true to run commands without isolation"
        )


def _start_server(
    head: list[str], argv: list[str], seccomp: bytes | None, cwd: str, env: dict[str, str], log_path: Path
) -> subprocess.Popen:
    """Start the shell server: `head` (cgroup join, bubblewrap) + the seccomp filter's fd + `argv`."""
    fds = (seccomp_fd(seccomp),) if seccomp is not None else ()
    if head:
        argv = [*head, *(arg for fd in fds for arg in ("--seccomp", str(fd))), "--", *argv]
    try:
        with open(log_path, "ab") as log_file:
            return subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                start_new_session=True,
                pass_fds=fds,
            )
    finally:
        for fd in fds:
            os.close(fd)
