"""Escape attempts against the local (bubblewrap) sandbox, as root and as an unprivileged host user.

Every attempt an attacker (or a clumsy operator) made in issue "Hardening" runs inside a real sandbox:
network (6 ways), host paths (10), mount/remount/kill, the gold and test patch anywhere visible, host
secrets (env, /proc/*/environ, ~/.aws), never-ending and detached processes, same-value writes to
host-wide sysctls, uid 0 inside, capabilities/no_new_privs/seccomp/user namespaces, a fork bomb,
memory across processes, disk fill, a huge file viewed and a huge patch submitted, annotated tags /
notes / refs, and the work tree deleted mid-episode. Each must be blocked.

The attempts run in a child process (`python test_sandbox_escape.py` prints one JSON object per
attempt) so the same list runs under the test's own uid (root here and in CI) and under an
unprivileged uid (setpriv), the latter inside a cgroup delegated to it, as systemd's `Delegate=`
gives a service: without one a non-root process has no way to cap memory across processes.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GOLD = "GOLD-FIX-ESCAPE-5e1f"
TEST = "TEST-PATCH-ESCAPE-77aa"
TAG_MESSAGE = "TAG-MESSAGE-ESCAPE-a1b2"
NOTE = "NOTE-ESCAPE-c3d4"
SECRET = "HOST-SECRET-ESCAPE-9f8e"
NON_ROOT_UID = 64_000
MEMORY_MB, PROCESSES, DISK_MB = 256, 64, 64
ESCAPED = "ESCAPED"


# --------------------------------------------------------------------------------------------------
# The attempts (run in the child process)
# --------------------------------------------------------------------------------------------------


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    done = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def _make_repo(src: Path) -> str:
    """base (lightweight tag v0.1 before it) -> later commit with the fix; an annotated tag written on base
    afterwards, a note, extra refs and a reflog. Returns base's sha."""
    src.mkdir(parents=True)
    _git(src, "init", "-q", "-b", "main")
    (src / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    _git(src, "add", "-A")
    _git(src, "commit", "-qm", "c1")
    _git(src, "tag", "v0.1")
    (src / "README.md").write_text("calc\n")
    _git(src, "add", "-A")
    _git(src, "commit", "-qm", "base")
    base = _git(src, "rev-parse", "HEAD")
    (src / "calc.py").write_text(f"def add(a, b):\n    return a + b  # {GOLD}\n")
    _git(src, "commit", "-qam", "the fix")
    _git(src, "tag", "-a", "v1.0-base", "-m", f"base, see the fix: {TAG_MESSAGE}", base)
    _git(src, "notes", "add", "-m", NOTE, base)
    _git(src, "update-ref", "refs/custom/fix", "HEAD")
    _git(src, "update-ref", "refs/remotes/origin/main", "HEAD")
    return base


def _task(base: str) -> object:
    from protege.tasks import TaskInstance

    patch = f"diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n@@ -1,2 +1,2 @@\n def add(a, b):\n-    return a - b\n+    return a + b  # {GOLD}\n"
    test_patch = f"diff --git a/test_calc.py b/test_calc.py\n--- /dev/null\n+++ b/test_calc.py\n@@ -0,0 +1 @@\n+# {TEST}\n"
    return TaskInstance(
        instance_id="owner__calc-1",
        repo="owner/calc",
        base_commit=base,
        problem_statement="add() subtracts",
        patch=patch,
        test_patch=test_patch,
        FAIL_TO_PASS=["test_calc.py::test_add"],
    )


def _delete_from_outside(tree: Path) -> None:
    """What a host-side cleaner does: as root the tree is an overlay mount (protege.agent.sandbox.checkouts), which
    `rm -rf` would only empty, as an agent's own `rm -rf` inside does; unmount it, then remove it."""
    if os.path.ismount(tree):
        subprocess.run(["umount", "--lazy", str(tree)], check=True)
    shutil.rmtree(tree)


def _stored_bytes(box: Path) -> int:
    """Bytes stored under box, an overlay mounted inside it counted once: in its upper layer, in box."""
    used = 0
    for dirpath, dirnames, filenames in os.walk(box):
        dirnames[:] = [d for d in dirnames if not os.path.ismount(os.path.join(dirpath, d))]
        used += sum(os.lstat(os.path.join(dirpath, f)).st_blocks * 512 for f in filenames)
    return used


def _host_leftovers(marker: str) -> list[int]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _accept_once(server: socket.socket) -> None:
    try:
        server.accept()[0].close()
    except OSError:  # closed unconnected: the point of the attempts
        return


class Attempts:
    """Runs each attempt and records (name, blocked, evidence)."""

    def __init__(self, workspace: Path) -> None:
        from protege.config import SandboxConfig

        self.workspace = workspace
        self.repos = workspace / "repos"
        self.base = _make_repo(self.repos / "owner__calc")
        self.task = _task(self.base)
        self.cfg = SandboxConfig(
            command_timeout_s=60,
            memory_limit_mb=MEMORY_MB,
            max_processes=PROCESSES,
            disk_limit_mb=DISK_MB,
            patch_limit_bytes=1024 * 1024,
            read_limit_bytes=1024 * 1024,
        )
        self.results: list[dict[str, object]] = []

    def sandbox(self, **change: object) -> object:
        from protege.agent.sandbox import open_sandbox

        return open_sandbox(self.cfg.model_copy(update=change), self.task, self.repos)

    def record(self, name: str, check: Callable[[], tuple[bool, str]]) -> None:
        started = time.monotonic()
        try:
            blocked, evidence = check()
        except Exception as err:  # an attempt that crashes the harness is not a block
            blocked, evidence = False, f"harness error: {type(err).__name__}: {err}"
        self.results.append(
            {
                "name": name,
                "blocked": bool(blocked),
                "evidence": evidence[-400:],
                "seconds": round(time.monotonic() - started, 2),
            }
        )

    def shell(self, sandbox: object, name: str, command: str, timeout: float | None = None) -> None:
        """Blocked when the command never prints ESCAPED."""

        def check() -> tuple[bool, str]:
            result = sandbox.run(command, timeout=timeout)  # type: ignore[attr-defined]
            return ESCAPED not in result.output, result.output

        self.record(name, check)

    def run(self) -> list[dict[str, object]]:
        with self.sandbox() as sandbox:
            self.network(sandbox)
            self.host_paths(sandbox)
            self.privileges(sandbox)
            self.leaks(sandbox)
            self.history(sandbox)
            self.processes(sandbox)
        for group in (self.memory, self.disk_one_file, self.disk_many_files, self.huge_patch):
            with self.sandbox() as sandbox:
                group(sandbox)
        with self.sandbox(disk_limit_mb=4096) as sandbox:  # room for the sparse file under RLIMIT_FSIZE
            self.huge_view(sandbox)
        self.deleted_mid_episode()
        return self.results

    def network(self, sandbox: object) -> None:
        server = socket.create_server(("127.0.0.1", 0))
        port = server.getsockname()[1]
        threading.Thread(target=_accept_once, args=(server,), daemon=True).start()
        abstract = socket.socket(socket.AF_UNIX)
        abstract.bind("\0protege-escape-test")
        abstract.listen()
        connect = "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3); print('ESCAPED')"
        self.shell(
            sandbox, "network: TCP to a server on host loopback", f'python3 -c "{connect}" 127.0.0.1 {port}'
        )
        self.shell(sandbox, "network: TCP to the internet", f'python3 -c "{connect}" 1.1.1.1 53')
        self.shell(sandbox, "network: DNS", "getent hosts pypi.org && echo ESCAPED")
        self.shell(
            sandbox,
            "network: bash /dev/tcp to host loopback",
            f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo ESCAPED",
        )
        udp = "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b'x', ('8.8.8.8', 53)); print('ESCAPED')"
        self.shell(sandbox, "network: UDP to the internet", f'python3 -c "{udp}"')
        unix = "import socket; s=socket.socket(socket.AF_UNIX); s.connect(chr(0)+'protege-escape-test'); print('ESCAPED')"
        self.shell(sandbox, "network: abstract unix socket on the host", f'python3 -c "{unix}"')
        server.close()
        abstract.close()

    def host_paths(self, sandbox: object) -> None:
        import protege

        secret_file = self.workspace / "secret.txt"
        secret_file.write_text(SECRET + "\n")
        package = Path(protege.__file__).parent
        read = "cat {} > /dev/null 2>&1 && echo ESCAPED"
        listing = "ls -A {} 2>/dev/null | grep -q . && echo ESCAPED"
        paths = {
            "the source repositories": listing.format(self.repos),
            "the installed protege package (demo gold patches)": listing.format(package),
            "the project checkout": read.format(ROOT / "pyproject.toml"),
            "a file in the host's temp dir": read.format(secret_file),
            "the host user's ~/.aws": read.format(f"{os.environ['HOME']}/.aws/credentials"),
            "/etc/shadow": read.format("/etc/shadow"),
            "/var/log": listing.format("/var/log"),
            "/run (daemon sockets)": listing.format("/run"),
            "/sys": listing.format("/sys"),
            "/dev/mem": "head -c1 /dev/mem > /dev/null 2>&1 && echo ESCAPED",
        }
        for label, command in paths.items():
            self.shell(sandbox, f"host path: {label}", command)

    def privileges(self, sandbox: object) -> None:
        self.shell(sandbox, "mount a tmpfs", "mkdir -p /tmp/m && mount -t tmpfs none /tmp/m && echo ESCAPED")
        self.shell(sandbox, "remount / read-write", "mount -o remount,rw / && touch /x && echo ESCAPED")
        self.shell(sandbox, "kill a host process", f"kill -0 {os.getpid()} && echo ESCAPED")
        for key in ("kernel/core_pattern", "vm/swappiness", "vm/overcommit_memory"):
            write = f'v=$(cat /proc/sys/{key}) && printf "%s\\n" "$v" > /proc/sys/{key} && echo ESCAPED'
            self.shell(sandbox, f"/proc/sys write: {key} (same value)", write)
        self.shell(sandbox, "/proc/sysrq-trigger write", "echo h > /proc/sysrq-trigger && echo ESCAPED")
        self.shell(sandbox, "uid 0 inside", '[ "$(id -u)" = 0 ] && echo ESCAPED')

        def host_uid() -> tuple[bool, str]:
            # whatever user namespaces lie between, a file the sandbox writes shows its host uid
            sandbox.run("touch /testbed/uid-probe")  # type: ignore[attr-defined]
            owner = (Path(sandbox._tree) / "uid-probe").stat().st_uid  # type: ignore[attr-defined]
            sandbox.run("rm /testbed/uid-probe")  # type: ignore[attr-defined]
            return owner != 0, f"host uid {owner}"

        self.record("host uid 0 behind the sandbox uid", host_uid)
        self.shell(sandbox, "capabilities", "grep -q '^CapEff:.*[1-9a-f]' /proc/self/status && echo ESCAPED")
        self.shell(
            sandbox, "no_new_privs unset", "grep -q '^NoNewPrivs:.*0' /proc/self/status && echo ESCAPED"
        )
        self.shell(
            sandbox, "no seccomp filter", "grep -q '^Seccomp:.*[01]$' /proc/self/status && echo ESCAPED"
        )
        self.shell(sandbox, "a new user namespace (root in it)", "unshare -Ur true && echo ESCAPED")

    def leaks(self, sandbox: object) -> None:
        for label, marker in (("gold patch", GOLD), ("test patch", TEST)):
            self.shell(
                sandbox,
                f"{label} text anywhere visible (files, git objects)",
                f"f=$(grep -rlsF {marker} / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev | head -3);"
                f' [ -n "$f" ] && echo ESCAPED $f; git cat-file --batch-all-objects --batch | grep -qaF {marker} && echo ESCAPED',
                timeout=300,
            )
        self.shell(sandbox, "host secret in the environment", f"env | grep -q {SECRET} && echo ESCAPED")
        self.shell(
            sandbox,
            "host secret in /proc/*/environ",
            f"cat /proc/*/environ 2>/dev/null | grep -qa {SECRET} && echo ESCAPED",
        )
        self.shell(
            sandbox,
            "host secret in ~/.aws",
            f"cat ~/.aws/credentials {os.environ['HOME']}/.aws/credentials 2>/dev/null | grep -q {SECRET} && echo ESCAPED",
        )

    def history(self, sandbox: object) -> None:
        self.shell(
            sandbox,
            "annotated tag written later on base_commit",
            f"git for-each-ref refs/tags --format='%(contents)'; git cat-file --batch-all-objects --batch | grep -qaF {TAG_MESSAGE} && echo ESCAPED",
        )
        self.shell(
            sandbox,
            "git notes",
            f"git notes list; git cat-file --batch-all-objects --batch | grep -qaF {NOTE} && echo ESCAPED",
        )
        self.shell(
            sandbox,
            "refs other than base_commit's ancestor tags, reflogs",
            "git for-each-ref --format='%(refname)' | grep -qv '^refs/tags/v0.1$' && echo ESCAPED; git reflog --all | grep -q . && echo ESCAPED",
        )

    def processes(self, sandbox: object) -> None:
        def never_ending() -> tuple[bool, str]:
            result = sandbox.run("sleep 1000.125", timeout=1)  # type: ignore[attr-defined]
            left = _host_leftovers("1000.125")
            return result.timed_out and not left, f"timed_out={result.timed_out} leftovers={left}"

        def detached() -> tuple[bool, str]:
            sandbox.run(
                "setsid nohup sleep 1000.375 >/dev/null 2>&1 & (sleep 1000.375 &) ; disown -a; echo started"
            )  # type: ignore[attr-defined]
            at_return = _host_leftovers("1000.375")
            time.sleep(1)  # outliving means still there, not still being torn down
            left = _host_leftovers("1000.375")
            return not left, f"at return {at_return}, a second later {left}"

        def fork_bomb() -> tuple[bool, str]:
            bomb = (
                "import os,time\nn=0\nwhile n<2000:\n try: pid=os.fork()\n except OSError: break\n"
                ' if pid==0: time.sleep(30); os._exit(0)\n n+=1\nprint("forked", n)'
            )
            result = sandbox.run(f"python3 -c '{bomb}'", timeout=60)  # type: ignore[attr-defined]
            count = int(result.output.split()[-1]) if "forked" in result.output else -1
            return 0 <= count < PROCESSES, result.output

        self.record("never-ending process", never_ending)
        self.record("detached processes outliving the command", detached)
        self.record(f"fork bomb (limit {PROCESSES} processes)", fork_bomb)

    def memory(self, sandbox: object) -> None:
        hog = 'python3 -c \'import time; b=bytearray(150*2**20); b[::4096]=b"x"*len(b[::4096]); time.sleep(4); print("HELD")\''
        command = f"for i in 1 2 3; do {hog} & done; wait"

        def check() -> tuple[bool, str]:
            result = sandbox.run(command, timeout=60)  # type: ignore[attr-defined]
            return result.output.splitlines().count("HELD") < 3, result.output

        self.record(f"memory across 3 processes (3 x 150 MB under a {MEMORY_MB} MB limit)", check)

    def _disk(self, sandbox: object, name: str, command: str) -> None:
        from protege.agent.protocols import SandboxError

        def check() -> tuple[bool, str]:
            try:
                result = sandbox.run(command, timeout=120)  # type: ignore[attr-defined]
            except SandboxError as err:
                return True, f"SandboxError: {err}"
            used = _stored_bytes(Path(sandbox._box))  # type: ignore[attr-defined]
            return used <= DISK_MB * 2**20, f"{used} bytes used; {result.output}"

        self.record(name, check)

    def disk_one_file(self, sandbox: object) -> None:
        self._disk(
            sandbox,
            f"disk fill: one 1 GB file (limit {DISK_MB} MB)",
            "head -c 1G /dev/zero > /testbed/fill; ls -l /testbed/fill",
        )

    def disk_many_files(self, sandbox: object) -> None:
        fill = "for i in $(seq 1 16); do head -c 30M /dev/zero > /tmp/fill$i; done; du -sh /tmp"
        self._disk(sandbox, f"disk fill: 16 files of 30 MB (limit {DISK_MB} MB)", fill)

    def huge_view(self, sandbox: object) -> None:
        from protege.agent.editor import Editor, ToolError

        def check() -> tuple[bool, str]:
            sandbox.run("truncate -s 1G /testbed/huge.txt")  # type: ignore[attr-defined]
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            try:
                Editor(sandbox).run({"command": "view", "path": "huge.txt"})  # type: ignore[arg-type]
                refused = ""
            except ToolError as err:
                refused = str(err)
            grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
            return (
                "over the limit" in refused and grown_mb < 100,
                f"refused={refused!r} host memory grew {grown_mb:.0f} MB",
            )

        self.record("editor view of a 1 GiB sparse file", check)

    def huge_patch(self, sandbox: object) -> None:
        from protege.agent.protocols import PatchTooLarge
        from protege.agent.tools import ToolBox
        from protege.trajectory import ToolCall

        def check() -> tuple[bool, str]:
            sandbox.run("head -c 8M /dev/urandom | base64 > /testbed/big.txt")  # type: ignore[attr-defined]
            box = ToolBox(sandbox, self.task, None, patch_limit_bytes=self.cfg.patch_limit_bytes)  # type: ignore[arg-type]
            try:
                outcome = box.execute(ToolCall(id="call_1", name="submit", arguments={}), [], 1)
            except PatchTooLarge as err:
                return True, f"PatchTooLarge: {err}"
            return False, f"a patch of {len(outcome.patch)} characters"

        self.record("submit an 11 MB patch (limit 1 MiB)", check)

    def deleted_mid_episode(self) -> None:
        from protege.agent.agent import Agent
        from protege.agent.policies import ScriptedPolicy
        from protege.config import AgentConfig
        from protege.trajectory import append_trajectory, read_trajectories

        def check() -> tuple[bool, str]:
            with self.sandbox() as sandbox:
                policy = ScriptedPolicy(
                    [{"tool": "bash", "arguments": {"command": f"echo {i}"}} for i in range(3)]
                )
                agent = Agent(AgentConfig(sandbox=self.cfg), policy, sandbox, self.task)  # type: ignore[arg-type]
                generate = policy.generate

                def delete_then_generate(messages: list, tools: list) -> object:
                    if policy._next == 1:
                        _delete_from_outside(sandbox._tree)  # type: ignore[attr-defined]
                    return generate(messages, tools)

                policy.generate = delete_then_generate  # type: ignore[method-assign]
                trajectory = agent.run()
            out = self.workspace / "trajectories.jsonl"
            append_trajectory(out, trajectory)
            written = list(read_trajectories(out))
            ok = (
                trajectory.status == "sandbox_error"
                and "gone" in trajectory.status_detail
                and len(written) == 1
            )
            return ok, f"{trajectory.status}: {trajectory.status_detail}; written={len(written)}"

        self.record("work tree deleted mid-episode (sandbox_error, trajectory written)", check)


def _main() -> None:
    os.environ["PROTEGE_ESCAPE_SECRET"] = SECRET
    os.environ["ANTHROPIC_API_KEY"] = SECRET
    with tempfile.TemporaryDirectory(prefix="protege-escape-") as workspace:
        home = Path(workspace) / "home"
        (home / ".aws").mkdir(parents=True)
        (home / ".aws" / "credentials").write_text(f"[default]\naws_secret_access_key = {SECRET}\n")
        os.environ["HOME"] = str(home)
        results = Attempts(Path(workspace)).run()
    print(json.dumps({"uid": os.getuid(), "results": results}))


# --------------------------------------------------------------------------------------------------
# The tests (run the attempts in a child as root and as an unprivileged uid)
# --------------------------------------------------------------------------------------------------

BWRAP = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")


def _child_env(pythonpath: list[str]) -> dict[str, str]:
    keep = ("PATH", "LANG", "TMPDIR")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    return env


def _report(argv: list[str], env: dict[str, str]) -> dict[str, object]:
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    results = report["results"]
    tried, blocked = len(results), sum(r["blocked"] for r in results)
    print(f"\nuid {report['uid']}: {blocked}/{tried} blocked in {time.monotonic() - started:.0f} s")
    for r in results:
        print(f"  {'blocked' if r['blocked'] else 'ESCAPED'}  {r['name']}")
    return report


def _assert_all_blocked(report: dict[str, object]) -> None:
    results = report["results"]
    assert len(results) == 46  # type: ignore[arg-type]
    escaped = [(r["name"], r["evidence"]) for r in results if not r["blocked"]]  # type: ignore[union-attr]
    assert escaped == []


@BWRAP
@pytest.mark.slow
def test_every_escape_attempt_is_blocked_as_this_user():
    """As root here and in CI (the case the issue found open); as whoever runs the suite elsewhere."""
    report = _report([sys.executable, __file__], _child_env([str(ROOT / "src"), *sys.path]))
    assert report["uid"] == os.getuid()
    _assert_all_blocked(report)


def _unprivileged_python(uid: int, pythonpath: list[str]) -> str | None:
    """An interpreter uid can run that imports protege (the venv's may live under root's private home)."""
    for python in (sys.executable, os.path.realpath(sys.executable), shutil.which("python3") or ""):
        probe = [*_setpriv(uid), python, "-c", "import sys, protege, pydantic; print(sys.version_info[:2])"]
        done = subprocess.run(probe, env=_child_env(pythonpath), capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip() == str(tuple(sys.version_info[:2])):
            return python
    return None


def _setpriv(uid: int) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]


def _delegated_cgroups(uid: int) -> list[Path]:
    """v1 memory and pids cgroups owned by uid, as a service manager delegates them (empty if impossible)."""
    from protege.agent.sandbox.confinement import _own_cgroups

    v1, _ = _own_cgroups()
    made = []
    for controller in ("memory", "pids"):
        if controller not in v1:
            break
        directory = v1[controller] / f"protege-escape-{os.getpid()}"
        try:
            directory.mkdir()
        except OSError:
            break
        made.append(directory)
        for name in ("cgroup.procs", "tasks", ""):
            os.chown(directory / name, uid, uid)
    return made


@BWRAP
@pytest.mark.slow
@pytest.mark.skipif(os.getuid() != 0, reason="needs root to switch to an unprivileged uid")
def test_every_escape_attempt_is_blocked_as_an_unprivileged_user():
    site = [p for p in sys.path if p.endswith("site-packages")]
    pythonpath = [str(ROOT / "src"), *site]
    python = _unprivileged_python(NON_ROOT_UID, pythonpath)
    if python is None:
        pytest.skip(
            f"no Python {sys.version_info[:2]} that uid {NON_ROOT_UID} can run with protege importable"
        )
    cgroups = _delegated_cgroups(NON_ROOT_UID)
    joined = "".join(f'echo $$ > "{d}/cgroup.procs" && ' for d in cgroups)
    script = f'{joined}exec "$@"'
    workspace = Path(tempfile.mkdtemp(prefix="protege-escape-"))
    os.chown(workspace, NON_ROOT_UID, NON_ROOT_UID)
    env = {**_child_env(pythonpath), "TMPDIR": str(workspace)}
    try:
        argv = ["/bin/sh", "-c", script, "sh", *_setpriv(NON_ROOT_UID), python, __file__]
        report = _report(argv, env)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
        for directory in cgroups:
            for child in directory.iterdir():
                if child.is_dir():
                    child.rmdir()
            directory.rmdir()
    assert report["uid"] == NON_ROOT_UID
    _assert_all_blocked(report)


@pytest.fixture
def attempts(tmp_path: Path) -> Attempts:
    return Attempts(tmp_path)


@BWRAP
def test_work_tree_deleted_mid_episode_is_a_sandbox_error_and_the_trajectory_is_written(attempts: Attempts):
    attempts.deleted_mid_episode()
    (result,) = attempts.results
    assert result["blocked"], result["evidence"]
    assert "sandbox_error: sandbox for owner__calc-1: the work tree" in str(result["evidence"])


@BWRAP
def test_huge_file_and_huge_patch_are_refused_without_reading_them_whole(attempts: Attempts):
    with attempts.sandbox(disk_limit_mb=4096) as sandbox:
        attempts.huge_view(sandbox)
    with attempts.sandbox() as sandbox:
        attempts.huge_patch(sandbox)
    assert [r["blocked"] for r in attempts.results] == [True, True], attempts.results
    assert "is 1073741824 bytes, over the limit of 1048576 bytes" in str(attempts.results[0]["evidence"])


@BWRAP
def test_a_patch_over_the_limit_ends_the_episode_as_patch_too_large(attempts: Attempts):
    from protege.agent.agent import Agent
    from protege.agent.policies import ScriptedPolicy
    from protege.config import AgentConfig

    turns = [
        {"tool": "bash", "arguments": {"command": "head -c 2M /dev/urandom | base64 > big.txt"}},
        {"tool": "submit", "arguments": {}},
    ]
    with attempts.sandbox() as sandbox:
        trajectory = Agent(
            AgentConfig(sandbox=attempts.cfg), ScriptedPolicy(turns), sandbox, attempts.task
        ).run()  # type: ignore[arg-type]
    assert trajectory.status == "patch_too_large"
    assert trajectory.status_detail == "the patch is over sandbox.patch_limit_bytes=1048576 bytes"
    assert trajectory.patch == ""


@BWRAP
def test_tags_notes_and_refs_written_after_base_commit_stay_out(attempts: Attempts):
    with attempts.sandbox() as sandbox:
        refs = sandbox.run("git for-each-ref --format='%(objecttype) %(refname)'").output  # type: ignore[attr-defined]
        attempts.history(sandbox)
    assert refs.splitlines() == ["commit refs/tags/v0.1"]
    assert len(attempts.results) == 3 and all(r["blocked"] for r in attempts.results), attempts.results


@BWRAP
def test_sandbox_directories_of_a_killed_process_are_removed_by_the_next_open(tmp_path: Path):
    """kill -9 runs no finalizer: the next sandbox opened on this host removes what the dead one left."""
    from protege.agent.sandbox import open_sandbox
    from protege.config import SandboxConfig

    base = _make_repo(tmp_path / "repos" / "owner__calc")
    opener = (
        "import sys, time; from pathlib import Path; sys.path.insert(0, sys.argv[1])\n"
        "from test_sandbox_escape import _task; from protege.agent.sandbox import open_sandbox\n"
        "from protege.config import SandboxConfig\n"
        "s = open_sandbox(SandboxConfig(), _task(sys.argv[2]), Path(sys.argv[3])); print(s._root, flush=True)\n"
        "time.sleep(600)"
    )
    env = _child_env([str(ROOT / "src"), *sys.path])
    child = subprocess.Popen(
        [sys.executable, "-c", opener, str(Path(__file__).parent), base, str(tmp_path / "repos")],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    left = Path(child.stdout.readline().strip())
    assert left.is_dir()
    child.kill()
    child.wait()
    assert left.is_dir()  # nothing ran at kill -9
    with open_sandbox(SandboxConfig(), _task(base), tmp_path / "repos") as sandbox:  # type: ignore[arg-type]
        assert not left.exists()
        assert not (left / "box").is_mount()
        assert sandbox.run("git rev-parse HEAD").output.strip() == base


if __name__ == "__main__":
    _main()
