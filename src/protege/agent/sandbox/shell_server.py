"""The command server that lives inside a local sandbox for its whole episode (standard library only).

The host starts it once, under the sandbox's full confinement (`python -I -S -c <this file, as source or
compiled> <config, marshalled, hex>`), and talks to it over its stdin/stdout in frames: a 1-byte kind and
a 4-byte big-endian length, then that many bytes. A request is a `Q` frame (the operation and its
arguments, marshalled: the host is trusted) followed by a `B` frame (raw bytes: a file's new content,
else empty); the answer is any number of `O` frames (output or file bytes, in order), an `E` frame with
an error's text if there is one, and one `R` frame (JSON, which the host parses safely whatever a
command inside may have forged: exit code and the operation's facts).

Operations:
- `run`: `bash -c` a script in a new session, stdout and stderr into one pipe, stdin /dev/null, a CPU
  limit of its own, killed with everything it started at its timeout. With `"session": true` (the agent's
  commands) it starts in the session's directory with the session's environment, and when it ends its
  bash reports `$PWD` and `export -p` into a memfd (fd 250): that becomes the session's directory and
  environment for the next command. This is how `cd` and `export` persist while every command still
  runs in a process of its own that the server can time out and kill. The work the server does per
  command is one posix_spawn and a wait on the command's pidfd.
- `read` (a file's bytes, or with `listing` a directory's two-level listing), `write` (optionally
  exclusive, parents created) and `edit` (`apply_edit` on the file, written back when it applies; the
  answer holds the text before): done by the server itself, no process started.

Inside a pid namespace (`contain`), once a command ends every other process of the sandbox but this one
is killed (`kill(-1)`): background jobs and daemons end with the command that started them, and none of
them can hold the output pipe open. `apply_edit`, `file_lines` and `join_lines` are imported by the host's
editor too, so the two sides agree on what an edit does.
"""

from __future__ import annotations

import marshal
import os
import select
import stat
import sys
import time

# Not `signal`, `json` or `struct`: the imports would be most of this server's start-up time.
SIGKILL, SIGPIPE, SIGXFSZ = 9, 13, 25

HEADER_SIZE = 5  # a frame: its kind (1 byte), its payload's length (4 bytes, big-endian), the payload


def frame_header(kind: bytes, size: int) -> bytes:
    return kind + size.to_bytes(4, "big")


STATE_FD = 250  # where a session command's bash reports its directory and environment
_CHUNK = 1 << 16
_STATE_LIMIT = 4 << 20  # a bigger report is ignored (the kernel caps an environment far below this)
_STATE_TRAP = (
    'trap \'__protege_rc=$?; { printf "%s\\0" "$PWD"; export -p; } >&'
    + str(STATE_FD)
    + " 2>/dev/null; exit $__protege_rc' EXIT; "
)
_UNCONTAINED_DRAIN_S = 0.05
_DROPPED_VARIABLES = (b"SHLVL", b"_", b"PWD")  # bash's own bookkeeping, set afresh for every command


def file_lines(text: str) -> list[str]:
    """The lines of a file as `cat -n` counts them (a final newline does not start another line)."""
    if not text:
        return []
    return text[:-1].split("\n") if text.endswith("\n") else text.split("\n")


def join_lines(lines: list[str], like: str) -> str:
    """Lines back to text, with a final newline when the original had one (or was empty)."""
    return "\n".join(lines) + ("\n" if like.endswith("\n") or not like else "")


def apply_edit(text: str, old: str | None, new: str, line: int | None) -> str | None:
    """`text` with `old` replaced by `new` (old must occur exactly once), or with `new` inserted after
    line `line` (0 = at the top); None when the edit does not apply."""
    if line is None:
        if not old or text.count(old) != 1:
            return None
        return text.replace(old, new)
    lines = file_lines(text)
    if not 0 <= line <= len(lines):
        return None
    return join_lines(lines[:line] + new.split("\n") + lines[line:], text)


# --------------------------------------------------------------------------------------------------
# bash's `export -p`, decoded
# --------------------------------------------------------------------------------------------------

_ANSI_C = {b"a": 7, b"b": 8, b"e": 27, b"E": 27, b"f": 12, b"n": 10, b"r": 13, b"t": 9, b"v": 11}


def _quoted(data: bytes, at: int) -> tuple[bytes, int]:
    """The value of a "..." or $'...' word starting at `at`, and the index after it."""
    out = bytearray()
    if data.startswith(b'"', at):
        i = at + 1
        while data[i : i + 1] != b'"':
            if data[i : i + 1] == b"\\" and data[i + 1 : i + 2] in (b"\\", b'"', b"$", b"`"):
                i += 1
            if i >= len(data):
                raise ValueError("unterminated")
            out += data[i : i + 1]
            i += 1
        return bytes(out), i + 1
    if not data.startswith(b"$'", at):
        raise ValueError("not a quoted word")
    i = at + 2
    while data[i : i + 1] != b"'":
        if i >= len(data):
            raise ValueError("unterminated")
        char = data[i : i + 1]
        if char != b"\\":
            out += char
            i += 1
            continue
        code = data[i + 1 : i + 2]
        if code in _ANSI_C:
            out.append(_ANSI_C[code])
            i += 2
        elif code.isdigit():
            digits = data[i + 1 : i + 4]
            digits = digits[: len(digits) - len(digits.lstrip(b"01234567"))] or b"0"
            out.append(int(digits, 8) & 0xFF)
            i += 1 + len(digits)
        else:  # \\ \' \" \? and anything else: the character itself
            out += code
            i += 2
    return bytes(out), i + 1


def parse_exports(data: bytes) -> dict[bytes, bytes]:
    """`export -p` output (`declare -x NAME="v"` lines, or `export NAME="v"` in posix mode) as a dict;
    names exported without a value, arrays and entries it cannot read are left out."""
    env: dict[bytes, bytes] = {}
    at = 0
    while at < len(data):
        line_end = data.find(b"\n", at)
        line_end = len(data) if line_end < 0 else line_end
        line = data[at:line_end]
        if line.startswith(b"declare -"):
            flags, _, rest = line[len(b"declare -") :].partition(b" ")
            offset = at + len(b"declare -") + len(flags) + 1
        else:
            flags, rest, offset = b"", line[len(b"export ") :], at + len(b"export ")
        name, eq, _ = rest.partition(b"=")
        if b"a" in flags.lower() or not eq or not name or not line.startswith((b"declare -", b"export ")):
            at = line_end + 1
            continue
        try:
            env[name], after = _quoted(data, offset + len(name) + 1)
        except (ValueError, IndexError):
            at = line_end + 1
            continue
        at = after + 1  # past the newline that ends the entry
    return env


# --------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------


class Server:
    def __init__(self, config: dict) -> None:
        self.workdir = config["workdir"]
        # Commands start here unless the session has moved: then the server enters that directory
        # around the spawn only (posix_spawn has no chdir of its own before Python 3.14).
        os.chdir(self.workdir)
        self.contain = config["contain"]  # in a pid namespace of its own: kill(-1) reaches only the sandbox
        self.grace_s = config["grace_s"]
        self.cwd = self.workdir
        self.base_env = {k: v for k, v in os.environb.items() if k not in _DROPPED_VARIABLES}
        self.env = dict(self.base_env)
        self.null = os.open(os.devnull, os.O_RDWR)
        self.state = os.memfd_create("protege-shell-state")
        self.requests = open(0, "rb", buffering=_CHUNK, closefd=False)  # noqa: SIM115  (for the server's life)

    # framing ------------------------------------------------------------------------------------
    def _read_exact(self, size: int) -> bytes:
        data = self.requests.read(size)  # buffered: a request's frames usually arrive in one read
        if len(data) < size:
            raise EOFError
        return data

    def receive(self) -> tuple[bytes, bytes]:
        header = self._read_exact(HEADER_SIZE)
        return header[:1], self._read_exact(int.from_bytes(header[1:], "big"))

    def send(self, kind: bytes, payload: bytes) -> None:
        data = frame_header(kind, len(payload)) + payload
        while data:
            data = data[os.write(1, data) :]

    def reply(self, code: int, error: str = "", **facts: bool | int | float | str) -> None:
        """An `E` frame with the error text (if any), then the `R` frame: JSON of plain numbers, booleans
        and fixed words, written by hand (see the imports)."""
        if error:
            self.send(b"E", error.encode(errors="surrogateescape"))
        fields = [f'"exit_code": {code}'] + [f'"{k}": {_json_scalar(v)}' for k, v in facts.items()]
        self.send(b"R", ("{" + ", ".join(fields) + "}").encode())

    def serve(self) -> None:
        handlers = {"run": self.run, "read": self.read, "write": self.write, "edit": self.edit}
        while True:
            try:
                _, header = self.receive()
                _, blob = self.receive()
            except EOFError:
                return
            request = marshal.loads(header)  # from the host, which is trusted (the answers are JSON)
            handlers[request.pop("op")](blob=blob, **request)

    # commands -----------------------------------------------------------------------------------
    def run(
        self, blob: bytes, script: str, args: list[str], timeout: float, cpu_s: int, session: bool
    ) -> None:
        cwd, env = (self.cwd, self.env) if session else (self.workdir, self.base_env)
        try:
            if cwd != self.workdir:
                os.chdir(cwd)
        except OSError:  # removed by the last command: start where the episode started
            cwd = self.workdir
        text = f"ulimit -t {cpu_s}; " + (_STATE_TRAP if session else "") + script
        out_r, out_w = os.pipe()
        actions = [
            (os.POSIX_SPAWN_DUP2, self.null, 0),
            (os.POSIX_SPAWN_DUP2, out_w, 1),
            (os.POSIX_SPAWN_DUP2, out_w, 2),
            (os.POSIX_SPAWN_DUP2, self.state, STATE_FD),
        ]
        started = time.monotonic()
        try:
            pid = os.posix_spawn(
                "/bin/bash",
                ["bash", "-c", text, "protege-sandbox", *args],
                {**env, b"PWD": os.fsencode(cwd)},
                file_actions=actions,
                setsid=True,
                setsigdef=(SIGPIPE, SIGXFSZ),  # Python ignores both; a command must not
            )
        except OSError as err:
            for fd in (out_r, out_w):
                os.close(fd)
            self.reply(126, error=f"cannot start bash: {err}")
            return
        finally:
            if cwd != self.workdir:
                os.chdir(self.workdir)
        os.close(out_w)
        code, timed_out = self._wait(pid, out_r, started + timeout)
        state = self._take_state()
        if session and not timed_out and state:
            self._adopt(state)
        self.reply(code, timed_out=timed_out)

    def _wait(self, pid: int, out_r: int, deadline: float) -> tuple[int, bool]:
        """Stream the output until the command exits (or its deadline), then end what it left behind."""
        pidfd = os.pidfd_open(pid)
        readers = [out_r]
        timed_out = exited = False
        while not exited:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([pidfd, *readers], [], [], remaining)
            exited = pidfd in ready
            if out_r in ready:
                self._forward(out_r, readers)
        self._end_all(pid)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        # Contained, every writer is gone now and EOF comes at once; outside a pid namespace a detached
        # daemon may hold the pipe, so what it has not written within a moment is left behind.
        idle_s = self.grace_s if self.contain else _UNCONTAINED_DRAIN_S
        while readers and select.select(readers, [], [], idle_s)[0]:
            self._forward(out_r, readers)
        os.close(out_r)
        return os.waitstatus_to_exitcode(status), timed_out

    def _forward(self, fd: int, readers: list[int]) -> None:
        chunk = os.read(fd, _CHUNK)
        if chunk:
            self.send(b"O", chunk)
        else:
            readers.remove(fd)

    def _take_state(self) -> bytes:
        """What the last command's bash reported (a memfd: no pipe to wake on, none to fill), emptied."""
        size = os.lseek(self.state, 0, os.SEEK_END)
        os.lseek(self.state, 0, os.SEEK_SET)
        report = os.read(self.state, min(size, _STATE_LIMIT)) if 0 < size <= _STATE_LIMIT else b""
        os.ftruncate(self.state, 0)
        os.lseek(self.state, 0, os.SEEK_SET)
        return report

    def _end_all(self, pid: int) -> None:
        """SIGKILL the command's group and, contained, every other process of the sandbox but this one."""
        try:
            os.killpg(pid, SIGKILL)
        except ProcessLookupError:
            pass
        if not self.contain:
            return
        try:
            os.kill(-1, SIGKILL)
        except ProcessLookupError:  # nothing else was running: the common case
            return
        deadline = time.monotonic() + self.grace_s
        while _others_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.001)

    def _adopt(self, state: bytes) -> None:
        cwd, _, exports = state.partition(b"\0")
        env = parse_exports(exports)
        if not cwd.startswith(b"/"):
            return
        self.cwd = os.fsdecode(cwd)
        self.env = {k: v for k, v in env.items() if k not in _DROPPED_VARIABLES}

    # files --------------------------------------------------------------------------------------
    def _path(self, path: str) -> str:
        return os.path.join(self.workdir, path)

    def read(self, blob: bytes, path: str, limit: int | None, listing: bool = False) -> None:
        target = self._path(path)
        try:
            info = os.stat(target)
        except FileNotFoundError:
            return self.reply(2, error=f"no such file: {path}")
        except OSError as err:
            return self.reply(1, error=f"{err.strerror}")
        if stat.S_ISDIR(info.st_mode):
            if listing:
                self.send(b"O", "\n".join(_listing(target)).encode(errors="surrogateescape"))
                return self.reply(0, kind="dir")
            return self.reply(21, error=f"is a directory: {path}")
        data, code, error = _read_regular(target, path, limit)
        if code:
            return self.reply(code, error=error)
        for at in range(0, len(data), _CHUNK):
            self.send(b"O", data[at : at + _CHUNK])
        self.reply(0, kind="file")

    def write(self, blob: bytes, path: str, exclusive: bool = False) -> None:
        code, error = _write(self._path(path), path, blob, exclusive)
        self.reply(code, error=error)

    def edit(
        self, blob: bytes, path: str, limit: int | None, old: str | None, new: str, line: int | None
    ) -> None:
        target = self._path(path)
        if os.path.isdir(target):
            return self.reply(21, error=f"is a directory: {path}")
        data, code, error = _read_regular(target, path, limit)
        if code:
            return self.reply(code, error=error)
        updated = apply_edit(data.decode(errors="surrogateescape"), old, new, line)
        if updated is not None:
            code, error = _write(target, path, updated.encode(errors="surrogateescape"), False)
        for at in range(0, len(data), _CHUNK):
            self.send(b"O", data[at : at + _CHUNK])
        self.reply(code, error=error, applied=updated is not None and not code)


def _write(target: str, path: str, data: bytes, exclusive: bool) -> tuple[int, str]:
    """(0, "") or (exit code, why): 17 when `exclusive` and the file exists. Parents are created; a FIFO
    without a reader is refused rather than waited on."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | (os.O_EXCL if exclusive else os.O_TRUNC)
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fd = os.open(target, flags, 0o666)
    except FileExistsError:
        return 17, f"file exists: {path}"
    except OSError as err:
        return 1, f"cannot write: {err.strerror}"
    try:
        os.set_blocking(fd, True)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError as err:
        return 1, f"cannot write: {err.strerror}"
    finally:
        os.close(fd)
    return 0, ""


def _json_scalar(value: bool | int | float | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value + '"'  # fixed words only ("file", "dir")
    return repr(value)


def _read_regular(target: str, path: str, limit: int | None) -> tuple[bytes, int, str]:
    """(bytes, 0, "") or (b"", exit code, why): READ-style codes, 2 missing, 27 over the limit."""
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return b"", 2, f"no such file: {path}"
    except OSError as err:
        return b"", 1, err.strerror or str(err)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return b"", 1, f"not a regular file: {path}"
        if limit is not None and info.st_size > limit:
            return (
                b"",
                27,
                (
                    f"{path} is {info.st_size} bytes, over the limit of {limit} bytes read back from the "
                    "sandbox; look at parts of it with bash (head, sed -n)"
                ),
            )
        chunks, total = [], 0
        while chunk := os.read(fd, _CHUNK):
            chunks.append(chunk)
            total += len(chunk)
            if limit is not None and total > limit:
                return b"", 27, f"{path} grew over the limit of {limit} bytes read back from the sandbox"
        return b"".join(chunks), 0, ""
    finally:
        os.close(fd)


def _listing(root: str) -> list[str]:
    """`find root -mindepth 1 -maxdepth 2 -name '.*' -prune -o -print | sort`."""
    found = []
    for name in _visible(root):
        path = os.path.join(root, name)
        found.append(path)
        if os.path.isdir(path) and not os.path.islink(path):
            found += [os.path.join(path, child) for child in _visible(path)]
    return sorted(found)


def _visible(directory: str) -> list[str]:
    try:
        return [name for name in os.listdir(directory) if not name.startswith(".")]
    except OSError:
        return []


def _others_alive(pid: int) -> bool:
    """Whether a process other than pid 1, this one and `pid` still runs in this pid namespace."""
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in (1, me, pid):
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                if handle.read().rsplit(b")", 1)[1].split()[0] != b"Z":
                    return True
        except (OSError, IndexError):
            continue
    return False


if __name__ == "__main__":
    Server(marshal.loads(bytes.fromhex(sys.argv[-1]))).serve()  # the config: always the last argument
