"""The host's end of a local sandbox's persistent shell (`shell_server`): start, frames, deadlines, restart.

`ShellClient.request` sends one operation and reads the answer's frames until its deadline; output frames
go to a callback (the caller's OutputCap), so the host never holds more than the cap. A server that does
not answer in time is killed with its whole process tree; one that died (killed from inside, or by the
memory limit) is noticed at the next read. Either way `ShellGone` is raised and the next request starts
a fresh server: the documented state rule is that such a restart puts the session back in the work tree
with the sandbox's initial environment.

Servers are started from one long-lived thread (`_spawn`): bubblewrap's `--die-with-parent` is
PR_SET_PDEATHSIG, which fires when the *thread* that started the process ends, and a sandbox outlives the
thread that opened it (rollout and evaluation workers).
"""

from __future__ import annotations

import functools
import json
import marshal
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from protege.agent.protocols import SandboxError
from protege.agent.sandbox.shell_server import HEADER_SIZE, frame_header

SERVER_SOURCE = Path(__file__).with_name("shell_server.py").read_text()
"""What the sandbox's Python runs (`-c`): the installed package itself is not visible inside."""
_BOOT_COMPILED = "import marshal, sys; exec(marshal.loads(bytes.fromhex(sys.argv[1])))"
_ARGUMENT_LIMIT = 120_000  # the kernel refuses one argument over 128 KiB


@functools.cache
def _compiled_hex() -> str:
    return marshal.dumps(compile(SERVER_SOURCE, "protege-shell-server", "exec")).hex()


def server_command(python: str) -> list[str]:
    """argv that runs the server (its config to be appended). With this very interpreter the code goes
    compiled (marshal's code format is this Python's own), which saves compiling it at every start."""
    if python == os.path.realpath(sys.executable) and len(_compiled_hex()) < _ARGUMENT_LIMIT:
        return [python, "-I", "-S", "-c", _BOOT_COMPILED, _compiled_hex()]
    return [python, "-I", "-S", "-c", SERVER_SOURCE]


_READ_CHUNK = 1 << 16


class ShellGone(Exception):
    """The server died or missed its deadline before answering; it has been killed and will be restarted."""

    def __init__(self, why: str, deadline_passed: bool) -> None:
        super().__init__(why)
        self.deadline_passed = deadline_passed


def child_pidfds(pid: int) -> list[int]:
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


def kill_group(pgid: int, leader_alive: bool, grace_s: float) -> None:
    """SIGKILL the group; if the leader was still alive, return once its children are gone too (or after grace_s).

    A sandbox's pid-1 dies with its parent (--die-with-parent) and takes the whole pid namespace with it,
    asynchronously: waiting for it means no process of a killed sandbox outlives this call.
    """
    children = child_pidfds(pgid) if leader_alive else []
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace_s
    for fd in children:
        select.select([fd], [], [], max(0.0, deadline - time.monotonic()))  # readable once it exited
        os.close(fd)


_spawn_lock = threading.Lock()
_spawner: tuple[int, queue.SimpleQueue] | None = None  # (the pid it belongs to, its queue)


def _spawn_forever(jobs: queue.SimpleQueue) -> None:
    while True:
        action, done = jobs.get()
        try:
            done.set_result(action())
        except BaseException as err:  # handed to the caller's thread
            done.set_exception(err)


def _spawn(action: Callable[[], subprocess.Popen]) -> subprocess.Popen:
    """Run `action` (which starts a process) on the process-wide spawner thread."""
    global _spawner
    with _spawn_lock:
        if _spawner is None or _spawner[0] != os.getpid():  # none yet, or a forked child's copy of none
            jobs: queue.SimpleQueue = queue.SimpleQueue()
            name = "protege-sandbox-spawner"
            threading.Thread(target=_spawn_forever, args=(jobs,), name=name, daemon=True).start()
            _spawner = (os.getpid(), jobs)
        jobs = _spawner[1]
    done: Future = Future()
    jobs.put((action, done))
    return done.result()


class ShellClient:
    """One sandbox's server process, started on first use and after it is lost."""

    def __init__(self, start: Callable[[], subprocess.Popen], grace_s: float) -> None:
        self._start, self.grace_s = start, grace_s
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()  # one request at a time: frames of two would interleave
        self.closed = False
        self._ahead: tuple[float, Callable[[bytes, dict | None], None]] | None = None
        self.starts = 0  # servers started (1 + restarts)
        self.requests = 0  # round trips

    def request(
        self, operation: dict, blob: bytes, wait_s: float, on_output: Callable[[bytes], None]
    ) -> dict:
        """Send `operation` (+ blob), feed output bytes to on_output, return the final JSON reply.

        ShellGone when the server dies or has not answered within wait_s (it is killed then).
        """
        with self._lock:
            return self._request(operation, blob, wait_s, on_output)

    def send_ahead(self, operation: dict, wait_s: float, check: Callable[[bytes, dict | None], None]) -> None:
        """Start the server and send `operation` now, without waiting: the next request first reads its
        answer and calls check(output, reply, or None if the server was lost), which may raise. A sandbox
        opens without waiting for its server to boot; the boot overlaps the policy's first turn."""
        with self._lock:
            self._send(self._running(), operation, b"")
            self._ahead = (wait_s, check)

    def _request(
        self, operation: dict, blob: bytes, wait_s: float, on_output: Callable[[bytes], None]
    ) -> dict:
        if self._ahead is not None:
            (ahead_s, check), self._ahead = self._ahead, None
            output, proc = bytearray(), self._proc  # the server it went to, even if dead: never a new one
            try:
                reply = (
                    None if proc is None else self._answer(proc, time.monotonic() + ahead_s, output.extend)
                )
            except ShellGone:
                reply = None
            check(bytes(output), reply)
        proc = self._running()
        self._send(proc, operation, blob)
        return self._answer(proc, time.monotonic() + wait_s, on_output)

    def _send(self, proc: subprocess.Popen, operation: dict, blob: bytes) -> None:
        self.requests += 1
        assert proc.stdin is not None
        header = marshal.dumps(operation, 4)
        frame = frame_header
        try:
            proc.stdin.write(frame(b"Q", len(header)) + header + frame(b"B", len(blob)))
            proc.stdin.write(blob)
            proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            self._lost(leader_alive=False)
            raise ShellGone("the sandbox shell had died", deadline_passed=False) from None

    def _answer(self, proc: subprocess.Popen, deadline: float, on_output: Callable[[bytes], None]) -> dict:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        head = HEADER_SIZE
        buffer = bytearray()
        error = ""
        while True:
            while len(buffer) >= head:
                kind, size = bytes(buffer[:1]), int.from_bytes(buffer[1:head], "big")
                if len(buffer) < head + size:
                    break
                payload = bytes(buffer[head : head + size])
                del buffer[: head + size]
                if kind == b"R":
                    try:
                        reply = json.loads(payload)
                    except ValueError:
                        reply = None
                    if not isinstance(reply, dict) or not isinstance(reply.get("exit_code"), int):
                        # only a command writing into the server's own pipe can do this: it is treated as
                        # having killed the server
                        self._lost(leader_alive=True)
                        raise ShellGone("the sandbox shell's answer was garbled", deadline_passed=False)
                    return {**reply, "error": error}
                if kind == b"E":
                    error = payload.decode(errors="replace")
                else:
                    on_output(payload)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._lost(leader_alive=True)
                raise ShellGone("the sandbox shell did not answer in time", deadline_passed=True)
            if not select.select([fd], [], [], remaining)[0]:
                continue
            chunk = os.read(fd, _READ_CHUNK)
            if not chunk:
                self._lost(leader_alive=False)
                raise ShellGone("the sandbox shell died", deadline_passed=False)
            buffer += chunk

    def _running(self) -> subprocess.Popen:
        if self.closed:
            raise SandboxError("the sandbox is closed")
        if self._proc is not None and self._proc.poll() is not None:
            self._lost(leader_alive=False)
        if self._proc is None:
            self._proc = _spawn(self._start)
            self.starts += 1
        return self._proc

    def _lost(self, leader_alive: bool) -> None:
        """Kill what is left of the server's process tree and forget it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        kill_group(proc.pid, leader_alive and proc.poll() is None, self.grace_s)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    continue
        proc.wait()

    def close(self) -> None:
        """Kill the server for good. Safe from another thread while a request is in flight (a rollout's
        timeout closes its sandbox to stop the episode): the kill ends that request with ShellGone and
        every later one raises SandboxError."""
        self.closed = True
        proc = self._proc
        if proc is not None:
            kill_group(proc.pid, proc.poll() is None, self.grace_s)
        with self._lock:
            self._lost(leader_alive=False)
