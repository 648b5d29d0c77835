"""Docker sandbox: the task's SWE-bench instance image, commands through the docker exec API.

The container runs `sleep infinity` hardened: network none, memory (no swap), CPU and pid limits, the
sandbox user (`sandbox.container_user`, not root), a read-only root filesystem with a tmpfs at /tmp and
the workdir on an anonymous volume initialised from the image (removed with the container), all
capabilities dropped, no-new-privileges, Docker's default seccomp profile, and no host environment
(only HOME=/tmp). Every command is `bash -c` wrapped in `timeout -s KILL` (which kills the command's whole process group) and its
output is streamed through the same cap as the local backend. At start `CLEANUP_SCRIPT` strips the
image's repository of everything past base_commit (remotes, later refs, reflogs, unreachable
objects); the container is removed on close, on garbage collection and at interpreter exit.

Also here, because the kubernetes backend shares them: `ContainerShell` (run/read/write/diff over any
exec function), `ContainerSandbox` (the Sandbox methods on top of it, and close), the start-concurrency
gate and the creation backoff.
"""

from __future__ import annotations

import base64
import logging
import re
import secrets
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Self, TypeVar

from protege.agent.protocols import CommandResult, SandboxError
from protege.agent.sandbox.common import DIFF_SCRIPT, READ_SCRIPT, OutputCap, raise_for_read
from protege.agent.sandbox.shell_server import apply_edit
from protege.config import SandboxConfig
from protege.tasks import TaskInstance

log = logging.getLogger(__name__)
T = TypeVar("T")

# Run in the image at start: keep HEAD (must be base_commit) and refs that are its ancestors (tags
# that version tools read); drop remotes, later refs, stashes, reflogs and every object only they
# reached. Prints the full base sha.
CLEANUP_SCRIPT = """\
set -e
base=$(git rev-parse --verify --quiet "$1^{commit}") || { echo "base_commit $1 not found in $PWD" >&2; exit 3; }
head=$(git rev-parse HEAD)
[ "$head" = "$base" ] || { echo "HEAD is $head, not base_commit $base" >&2; exit 4; }
for remote in $(git remote); do git remote remove "$remote"; done
current=$(git symbolic-ref -q HEAD || true)
git for-each-ref --format='%(refname)' | while read -r ref; do
  [ "$ref" = "$current" ] && continue
  git merge-base --is-ancestor "$ref" "$base" 2>/dev/null || git update-ref -d "$ref"
done
gitdir=$(git rev-parse --git-dir)
rm -rf "$gitdir/logs" "$gitdir/FETCH_HEAD" "$gitdir/ORIG_HEAD" "$gitdir/lost-found"
if [ "${2:-full}" = none ]; then  # base alone: drop every tag, cut the history at base (no parent left)
  git for-each-ref --format='%(refname)' refs/tags | while read -r ref; do git update-ref -d "$ref"; done
  echo "$base" > "$gitdir/shallow"
fi
git config core.logAllRefUpdates false
git -c gc.reflogExpire=now -c gc.reflogExpireUnreachable=now -c gc.pruneExpire=now gc --quiet --prune=now
echo "$base"
"""
WRITE_FIRST_SCRIPT = 'mkdir -p -- "$(dirname -- "$1")" && printf %s "$2" | base64 -d > "$1"'
CREATE_SCRIPT = 'if [ -e "$1" ]; then echo "file exists: $1" >&2; exit 17; fi; ' + WRITE_FIRST_SCRIPT
# A directory's listing (exit 40) or READ_SCRIPT: the editor's `view` in one exec.
LIST_OR_READ_SCRIPT = (
    'if [ -d "$1" ]; then find "$1" -mindepth 1 -maxdepth 2 -name \'.*\' -prune -o -print | sort; exit 40; fi\n'
    + READ_SCRIPT
)
_LISTED = 40
WRITE_NEXT_SCRIPT = 'printf %s "$2" | base64 -d >> "$1"'
WRITE_CHUNK_BYTES = 48 * 1024
"""Raw bytes per exec when writing a file: 64 KiB once base64-encoded, under the kernel's 128 KiB cap
on one argument."""
KILLED = 128 + signal.SIGKILL
"""Exit status of a command killed by `timeout -s KILL`."""
SANDBOX_LABEL_VALUE = "true"
"""Value of the `sandbox.pod_label` label; the deny-egress NetworkPolicy selects `<pod_label>: "true"`."""
INSTANCE_ANNOTATION = "protege.ai/instance-id"
NANO = 10**9  # docker counts CPUs in nano-CPUs
_NAME_MAX = 63  # DNS label length: pod and container names
_TRANSIENT_STATUS = (409, 429)

ExecFn = Callable[[list[str], float, int | None, str], CommandResult]
"""(argv, timeout_s, output limit or None, decode errors) -> output, exit code, truncated, duration."""


def container_argv(
    cfg: SandboxConfig, workdir: str, timeout: float, script: str, args: list[str]
) -> list[str]:
    """argv running `script` (its $1.. = args) in workdir after `shell_init`, killed with its group at timeout."""
    wrapper = f'{cfg.shell_init}\ncd "$1" && shift && exec timeout -s KILL "$1" bash -c "$2" protege-sandbox "${{@:3}}"'
    return ["bash", "-c", wrapper, "protege-sandbox", workdir, f"{timeout:g}", script, *args]


def sandbox_name(task: TaskInstance) -> str:
    """`protege-<instance slug>-<random hex>`, a valid DNS label (pod and container names)."""
    suffix = secrets.token_hex(4)
    slug = re.sub(r"[^a-z0-9]+", "-", task.instance_id.lower()).strip("-")
    return f"protege-{slug[: _NAME_MAX - len('protege--') - len(suffix)].strip('-')}-{suffix}"


def image_for(cfg: SandboxConfig, task: TaskInstance) -> str:
    """The container image of a task (`image_template` applied to its `image` column)."""
    if "{image}" in cfg.image_template and not task.image:
        raise SandboxError(f"task {task.instance_id} has no `image`; the {cfg.backend} sandbox needs one")
    return cfg.image_template.format(image=task.image)


class ContainerShell:
    """The Sandbox file and command operations for a container reached through `exec_fn`."""

    def __init__(self, cfg: SandboxConfig, exec_fn: ExecFn, what: str) -> None:
        self.cfg, self.exec_fn, self.what = cfg, exec_fn, what

    def script(
        self, script: str, args: list[str], timeout: float, limit: int | None, errors: str = "replace"
    ):
        result = self.exec_fn(
            container_argv(self.cfg, self.cfg.workdir, timeout, script, args), timeout, limit, errors
        )
        # An OOM kill also exits 137, but before the deadline.
        result.timed_out = result.exit_code == KILLED and result.duration_s >= timeout
        return result

    def run(self, command: str, timeout: float | None) -> CommandResult:
        return self.script(command, [], timeout or self.cfg.command_timeout_s, self.cfg.output_limit_chars)

    def read_file(self, path: str) -> str:
        result = self.script(READ_SCRIPT, [path], self.cfg.command_timeout_s, None, errors="surrogateescape")
        return raise_for_read(path, result)

    def read_path(self, path: str) -> tuple[str, str]:
        result = self.script(
            LIST_OR_READ_SCRIPT, [path], self.cfg.command_timeout_s, None, errors="surrogateescape"
        )
        if result.exit_code == _LISTED:
            return "dir", result.output
        return "file", raise_for_read(path, result)

    def write_file(self, path: str, content: str, exclusive: bool = False) -> None:
        data = content.encode(errors="surrogateescape")
        for offset in range(0, max(len(data), 1), WRITE_CHUNK_BYTES):
            piece = base64.b64encode(data[offset : offset + WRITE_CHUNK_BYTES]).decode()
            script = WRITE_NEXT_SCRIPT if offset else CREATE_SCRIPT if exclusive else WRITE_FIRST_SCRIPT
            result = self.script(
                script, [path, piece], self.cfg.command_timeout_s, self.cfg.output_limit_chars
            )
            if result.exit_code != 0:
                error = FileExistsError if result.exit_code == 17 else OSError
                raise error(f"{path}: {result.output.strip()}")

    def edit_file(self, path: str, old: str | None, new: str, line: int | None) -> tuple[str, bool]:
        """A read and a write (two execs: the image may have no Python to do it in one)."""
        text = self.read_file(path)
        updated = apply_edit(text, old, new, line)
        if updated is not None:
            self.write_file(path, updated)
        return text, updated is not None

    def diff(self, base_commit: str) -> str:
        result = self.script(DIFF_SCRIPT, [base_commit], self.cfg.setup_timeout_s, None)
        if result.exit_code != 0:
            raise SandboxError(f"{self.what}: git diff failed: {result.output.strip()}")
        return result.output

    def clean_history(self, base_commit: str, history: str = "full") -> str:
        """Run CLEANUP_SCRIPT (`history="none"`: keep base_commit alone); returns the full base sha,
        SandboxError when the image is not at base_commit."""
        result = self.script(
            CLEANUP_SCRIPT, [base_commit, history], self.cfg.setup_timeout_s, self.cfg.output_limit_chars
        )
        if result.exit_code != 0:
            raise SandboxError(
                f"{self.what}: history cleanup failed ({result.exit_code}): {result.output.strip()}"
            )
        return result.output.split()[-1]


_START_SLOTS: dict[int, threading.BoundedSemaphore] = {}
_START_SLOTS_LOCK = threading.Lock()


@contextmanager
def start_slot(cap: int) -> Iterator[None]:
    """Process-wide cap on sandbox starts in flight (one semaphore per cap value)."""
    with _START_SLOTS_LOCK:
        slots = _START_SLOTS.setdefault(cap, threading.BoundedSemaphore(cap))
    with slots:
        yield


def transient_status(status: int | None) -> bool:
    """409 (conflict), 429 (throttled) and 5xx are worth retrying."""
    return status is not None and (status in _TRANSIENT_STATUS or status >= 500)


def with_backoff(
    action: Callable[[], T], transient: Callable[[Exception], bool], retries: int, backoff_s: float
) -> T:
    """Call action; on a transient error retry up to `retries` times, waiting backoff_s * 2**attempt."""
    from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

    def warn(state: Any) -> None:
        error = state.outcome.exception()
        log.warning("sandbox start refused (%s); retry %d/%d", error, state.attempt_number, retries)

    retrying = Retrying(
        stop=stop_after_attempt(retries + 1),
        wait=wait_exponential(multiplier=backoff_s, exp_base=2, min=backoff_s),
        retry=retry_if_exception(transient),
        before_sleep=warn,
        reraise=True,
    )
    return retrying(action)


def container_kwargs(cfg: SandboxConfig, task: TaskInstance, image: str, name: str) -> dict[str, Any]:
    """Keyword arguments of `client.containers.run` for a sandbox container (hardened: module docstring)."""
    from docker.types import Mount

    memory = f"{cfg.memory_limit_mb}m"
    return {
        "image": image,
        "command": ["sleep", "infinity"],
        "name": name,
        "detach": True,
        "working_dir": cfg.workdir,
        "network_mode": "none",
        "mem_limit": memory,
        "memswap_limit": memory,  # no swap on top of the memory limit
        "nano_cpus": int(cfg.cpu_limit * NANO),
        "pids_limit": cfg.max_processes,
        "user": cfg.container_user,
        "read_only": True,
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={cfg.container_tmpfs_mb}m"},
        # an anonymous volume is filled from the image's workdir: writable on a read-only root
        "mounts": [Mount(target=cfg.workdir, source=None, type="volume")],
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "environment": {"HOME": "/tmp"},
        "labels": {cfg.pod_label: SANDBOX_LABEL_VALUE, INSTANCE_ANNOTATION: task.instance_id},
    }


def _remove_container(container: Any) -> None:
    import docker.errors

    try:
        container.remove(force=True, v=True)  # v: the workdir's anonymous volume too
    except docker.errors.NotFound:
        return
    except docker.errors.DockerException as err:
        log.error("could not remove sandbox container %s: %s", getattr(container, "id", "?"), err)


def _docker_transient(err: Exception) -> bool:
    import docker.errors

    return isinstance(err, docker.errors.APIError) and transient_status(err.status_code)


class ContainerSandbox:
    """The Sandbox operations the container backends share: every one goes through `_shell` (a ContainerShell
    over the backend's exec). A backend sets `_shell` and `base_commit` when it starts, and `_release` (a
    weakref.finalize that removes the container or pod) as soon as there is something to remove."""

    _shell: ContainerShell
    base_commit: str
    _release: Callable[[], object]

    def run(self, command: str, timeout: float | None = None) -> CommandResult:
        """Run a bash command in workdir; output capped, the process group killed at the timeout."""
        return self._shell.run(command, timeout)

    def read_file(self, path: str) -> str:
        """Whole file (relative to workdir); FileNotFoundError/IsADirectoryError/OSError naming the path."""
        return self._shell.read_file(path)

    def read_path(self, path: str) -> tuple[str, str]:
        """("file", text) or ("dir", listing two levels deep, hidden entries left out)."""
        return self._shell.read_path(path)

    def write_file(self, path: str, content: str, exclusive: bool = False) -> None:
        """Create or replace a file, parents created; OSError naming the path (FileExistsError: exclusive)."""
        self._shell.write_file(path, content, exclusive)

    def edit_file(self, path: str, old: str | None, new: str, line: int | None) -> tuple[str, bool]:
        """`shell_server.apply_edit` on the file, written back when it applies: (text before, written)."""
        return self._shell.edit_file(path, old, new, line)

    def diff(self) -> str:
        """`git diff` against base_commit, new files included, text only."""
        return self._shell.diff(self.base_commit)

    def close(self) -> None:
        """Remove the container or pod (idempotent)."""
        self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DockerSandbox(ContainerSandbox):
    """One container per episode from the instance image; removed on close."""

    def __init__(self, cfg: SandboxConfig, task: TaskInstance, client: Any = None) -> None:
        import docker

        self.cfg, self.task, self.workdir = cfg, task, cfg.workdir
        what = f"docker sandbox for {task.instance_id}"
        image = image_for(cfg, task)

        def create() -> Any:
            return self._client.containers.run(**container_kwargs(cfg, task, image, sandbox_name(task)))

        try:
            if client is None:
                # A silent command streams nothing until its timeout; the HTTP read timeout must outlast that.
                read_timeout = max(cfg.command_timeout_s, cfg.setup_timeout_s, cfg.start_timeout_s)
                client = docker.from_env(timeout=int(read_timeout + cfg.exec_grace_s))
            self._client = client
            with start_slot(cfg.max_concurrent_starts):
                self._container = with_backoff(
                    create, _docker_transient, cfg.start_retries, cfg.start_backoff_s
                )
        except docker.errors.DockerException as err:
            raise SandboxError(f"{what}: could not start a container from {image}: {err}") from err
        self._release = weakref.finalize(self, _remove_container, self._container)
        self._shell = ContainerShell(cfg, self._exec, what)
        try:
            self.base_commit = self._shell.clean_history(task.base_commit, task.history)
        except BaseException:
            self.close()
            raise

    def _exec(self, argv: list[str], timeout: float, limit: int | None, errors: str) -> CommandResult:
        start, cap, api = time.monotonic(), OutputCap(limit, errors), self._client.api
        try:
            exec_id = api.exec_create(self._container.id, argv, stdout=True, stderr=True)["Id"]
            for chunk in api.exec_start(exec_id, stream=True):
                cap.feed(chunk)
            exit_code = api.exec_inspect(exec_id)["ExitCode"]
        except Exception as err:  # the daemon or the container failed, not the command
            raise SandboxError(f"docker sandbox for {self.task.instance_id}: exec failed: {err}") from err
        output, truncated = cap.text()
        return CommandResult(output, exit_code, truncated, False, time.monotonic() - start)
