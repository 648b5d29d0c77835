"""Confinement of the local sandbox beyond bubblewrap's namespaces: seccomp, cgroups, a size-limited tree.

- `seccomp_program()`: a BPF deny-list (mount, ptrace, keyctl, bpf, unshare/setns, namespace flags of
  clone, kexec, modules, reboot, swap, personality, ...) built by libseccomp (through ctypes, so the
  library, not this file, knows each architecture's syscall numbers and rejects foreign ABIs); bubblewrap
  loads it with `--seccomp FD`. Denied calls fail with EPERM (clone3 with ENOSYS so glibc falls back to
  clone, whose flags the filter can see, as Docker's default profile does).
- `Cgroup`: one cgroup per sandbox with `memory` and `pids` limits that every command joins before
  bubblewrap starts, so the limits cover all its processes together. cgroup v1 (per-controller
  hierarchies) or v2 where this process may create a child; elsewhere `Cgroup.create` says why not.
- `mount_tmpfs` / `unmount`: a size-limited tmpfs for the sandbox's tree and scratch directories (root only).
- `sweep_stale`: sandbox directories (and their mounts and cgroups) whose owner died without cleaning
  up, recognised by a lock file the live owner holds (flock is released by the kernel on any exit).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import functools
import logging
import os
import threading
import time
from pathlib import Path

from protege.agent.protocols import SandboxError

log = logging.getLogger(__name__)

DENIED_SYSCALLS = (
    # file systems and mounts
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "chroot",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "name_to_handle_at",
    "open_by_handle_at",
    "quotactl",
    "swapon",
    "swapoff",
    # other processes, the kernel and its keyrings
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "reboot",
    "syslog",
    "acct",
    "lookup_dcookie",
    "uselib",
    "personality",
    "vhangup",
    "iopl",
    "ioperm",
    "nfsservctl",
    "_sysctl",
    # namespaces and the clock
    "unshare",
    "setns",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
)
# CLONE_NEW* flags: a clone with any of them is refused (the sandbox's namespaces are final).
NAMESPACE_FLAGS = (
    0x00000080,
    0x00020000,
    0x02000000,
    0x04000000,
    0x08000000,
    0x10000000,
    0x20000000,
    0x40000000,
)
_TIOCSTI = 0x5412  # pushes characters into a terminal's input queue
_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_CMP_EQ, _SCMP_CMP_MASKED_EQ = 4, 7
LOCK_NAME = "lock"
_YOUNG_S = 60.0  # a directory without its lock file younger than this may be one being created


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


@functools.cache
def seccomp_program() -> bytes:
    """The compiled BPF filter (cached per process); SandboxError when libseccomp cannot be loaded."""
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as err:
        raise SandboxError(
            f"seccomp: cannot load libseccomp ({err}); install the `libseccomp2` package "
            "or set sandbox.seccomp=false"
        ) from err
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(_SCMP_ACT_ALLOW)
    if not ctx:
        raise SandboxError("seccomp: seccomp_init failed")
    try:

        def deny(syscall: str, action: int, *conditions: _ArgCmp) -> None:
            number = lib.seccomp_syscall_resolve_name(syscall.encode())
            if number < 0:  # not a syscall on this architecture
                return
            array = (_ArgCmp * len(conditions))(*conditions) if conditions else None
            rc = lib.seccomp_rule_add_array(ctx, action, number, len(conditions), array)
            if rc < 0:
                raise SandboxError(f"seccomp: cannot add a rule for {syscall}: {os.strerror(-rc)}")

        for syscall in DENIED_SYSCALLS:
            deny(syscall, _errno_action(errno.EPERM))
        deny("clone3", _errno_action(errno.ENOSYS))
        for flag in NAMESPACE_FLAGS:
            deny("clone", _errno_action(errno.EPERM), _ArgCmp(0, _SCMP_CMP_MASKED_EQ, flag, flag))
        deny("ioctl", _errno_action(errno.EPERM), _ArgCmp(1, _SCMP_CMP_MASKED_EQ, 0xFFFFFFFF, _TIOCSTI))
        read_fd, write_fd = os.pipe()
        try:
            rc = lib.seccomp_export_bpf(ctx, write_fd)
            os.close(write_fd)
            write_fd = -1
            if rc < 0:
                raise SandboxError(f"seccomp: cannot export the filter: {os.strerror(-rc)}")
            chunks = []
            while chunk := os.read(read_fd, 1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(read_fd)
            if write_fd >= 0:
                os.close(write_fd)
    finally:
        lib.seccomp_release(ctx)


def seccomp_fd(program: bytes) -> int:
    """A readable fd holding `program` (a pipe: the filter is far smaller than a pipe's buffer)."""
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, program)
    finally:
        os.close(write_fd)
    return read_fd


# --------------------------------------------------------------------------------------------------
# cgroups
# --------------------------------------------------------------------------------------------------


def _own_cgroups() -> tuple[dict[str, Path], Path | None]:
    """({v1 controller: this process's directory in it}, this process's v2 directory or None)."""
    mounts: dict[str, Path] = {}
    unified: Path | None = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(tail) < 3 or fields[3] != "/":
            continue
        if tail[0] == "cgroup2":
            unified = Path(fields[4])
        elif tail[0] == "cgroup":
            for option in tail[2].split(","):
                mounts.setdefault(option, Path(fields[4]))
    v1: dict[str, Path] = {}
    v2: Path | None = None
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if not controllers and unified is not None:
            v2 = unified / path.lstrip("/")
        for controller in controllers.split(","):
            if controller in mounts:
                v1[controller] = mounts[controller] / path.lstrip("/")
    return v1, v2


class Cgroup:
    """A per-sandbox cgroup: `procs` are the cgroup.procs files a command writes its pid to."""

    def __init__(self, dirs: list[Path]) -> None:
        self.dirs = dirs
        self.procs = [d / "cgroup.procs" for d in dirs]

    @classmethod
    def create(cls, name: str, memory_bytes: int, max_processes: int) -> tuple[Cgroup | None, str]:
        """(the cgroup, "") or (None, why this process cannot make one)."""
        try:
            v1, v2 = _own_cgroups()
        except OSError as err:
            return None, f"cannot read this process's cgroups: {err}"
        if "memory" in v1 and "pids" in v1:
            limits = {
                v1["memory"] / name: {
                    "memory.limit_in_bytes": memory_bytes,
                    "memory.memsw.limit_in_bytes": memory_bytes,  # no escape into swap
                },
                v1["pids"] / name: {"pids.max": max_processes},
            }
        elif v2 is not None:
            enabled = (v2 / "cgroup.subtree_control").read_text().split() if v2.exists() else []
            if not {"memory", "pids"} <= set(enabled):
                return None, (
                    f"cgroup v2: {v2} does not delegate the memory and pids controllers to children "
                    "(a cgroup holding processes cannot, by the no-internal-process rule)"
                )
            limits = {
                v2 / name: {"memory.max": memory_bytes, "memory.swap.max": 0, "pids.max": max_processes}
            }
        else:
            return None, "no memory and pids cgroup controllers are mounted"
        made: list[Path] = []
        try:
            for directory, files in limits.items():
                directory.mkdir()
                made.append(directory)
                for file, value in files.items():
                    if (directory / file).exists():
                        (directory / file).write_text(f"{value}\n")
        except OSError as err:
            Cgroup(made).remove()
            return None, f"cannot create cgroup {made[-1] if made else name}: {err}"
        return cls(made), ""

    def remove(self, grace_s: float = 5.0) -> None:
        """Kill what is still in the cgroups (a killed sandbox's pid namespace dies asynchronously) and
        remove them, waiting up to grace_s for them to empty."""
        deadline = time.monotonic() + grace_s
        for directory in self.dirs:
            while True:
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as err:
                    if err.errno != errno.EBUSY or time.monotonic() > deadline:
                        log.warning("could not remove cgroup %s: %s", directory, err)
                        break
                _kill_members(directory)
                time.sleep(0.02)


def _kill_members(directory: Path) -> None:
    try:
        pids = (directory / "cgroup.procs").read_text().split()
    except OSError:
        return
    for pid in pids:
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, PermissionError):
            continue


# --------------------------------------------------------------------------------------------------
# A size-limited tree, and the leftovers of owners that died
# --------------------------------------------------------------------------------------------------

_MS_NOSUID, _MS_NODEV, _MNT_DETACH = 0x2, 0x4, 0x2


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def mount_tmpfs(path: Path, size_mb: int, uid: int, gid: int) -> str:
    """Mount a tmpfs of size_mb at path owned by uid:gid; "" or why it could not."""
    options = f"size={size_mb}m,mode=0700,uid={uid},gid={gid}".encode()
    if _libc().mount(b"protege-sandbox", str(path).encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, options) != 0:
        return os.strerror(ctypes.get_errno())
    return ""


def mount_overlay(lower: Path, upper: Path, work: Path, merged: Path) -> str:
    """Mount an overlay of the read-only `lower` with writes going to `upper` at `merged` (root only);
    "" or why it could not. A write to a lower file copies it up first: `lower` is never modified."""
    paths = [str(p) for p in (lower, upper, work)]
    if any(c in p for p in paths for c in ",:\\"):  # the option string's separators
        return f"a path holds one of ',:\\': {paths}"
    options = f"lowerdir={paths[0]},upperdir={paths[1]},workdir={paths[2]}".encode()
    flags = _MS_NOSUID | _MS_NODEV
    if _libc().mount(b"protege-checkout", str(merged).encode(), b"overlay", flags, options) != 0:
        return os.strerror(ctypes.get_errno())
    return ""


def unmount(path: Path) -> None:
    if os.path.ismount(path) and _libc().umount2(str(path).encode(), _MNT_DETACH) != 0:
        log.warning("could not unmount %s: %s", path, os.strerror(ctypes.get_errno()))


def hold_lock(root: Path) -> int:
    """Create and lock root/LOCK_NAME; the fd keeps the lock until it is closed or this process dies.

    The file is locked before it takes its name: a sweep in another thread or process that opened it
    between its creation and its lock would take the lock and remove a live sandbox."""
    partial = root / f".{LOCK_NAME}-{os.getpid()}-{threading.get_ident()}"
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.rename(partial, root / LOCK_NAME)
    return fd


def _is_stale(root: Path) -> bool:
    try:
        fd = os.open(root / LOCK_NAME, os.O_RDWR)
    except FileNotFoundError:
        try:
            return time.time() - root.stat().st_mtime > _YOUNG_S
        except FileNotFoundError:
            return False
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def sweep_stale(parent: Path, prefix: str, box: str, remove_tree: object) -> list[str]:
    """Remove `parent/prefix*` directories whose owner is gone (their `box` mount and cgroups too).

    Returns the names removed. `remove_tree(path)` deletes a tree whatever its permissions.
    """
    removed = []
    try:
        candidates = [p for p in parent.iterdir() if p.name.startswith(prefix) and p.is_dir()]
    except OSError:
        return removed
    try:
        v1, v2 = _own_cgroups()
    except OSError:
        v1, v2 = {}, None
    cgroup_parents = {*v1.values(), *([v2] if v2 else [])}
    for root in candidates:
        if not _is_stale(root):
            continue
        unmount(root / box)
        try:
            remove_tree(root)  # type: ignore[operator]
        except OSError as err:
            log.warning("could not remove stale sandbox %s: %s", root, err)
            continue
        for cgroup_parent in cgroup_parents:
            Cgroup([cgroup_parent / root.name]).remove()
        removed.append(root.name)
    if removed:
        log.info(
            "removed %d stale sandbox directories left by processes that died: %s", len(removed), removed
        )
    return removed


def tree_bytes(path: Path) -> int:
    """Disk space used under path (allocated blocks, so a sparse file counts what it really uses)."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except FileNotFoundError:
                continue
    return total


def chown_tree(path: Path, uid: int, gid: int) -> None:
    """chown -R without following symlinks."""
    os.lchown(path, uid, gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            os.lchown(os.path.join(dirpath, name), uid, gid)


__all__ = [
    "DENIED_SYSCALLS",
    "Cgroup",
    "chown_tree",
    "hold_lock",
    "mount_overlay",
    "mount_tmpfs",
    "seccomp_fd",
    "seccomp_program",
    "sweep_stale",
    "tree_bytes",
    "unmount",
]
