"""A Docker engine for this project: `protege docker up | down | status | env | images`.

- **A daemon already running** (a developer laptop: `DOCKER_HOST`, or the default socket answers): used as
  is, with the public base images (`PUBLIC_BASE`).
- **Else, as root**: `apt-get install docker.io` when `dockerd` is missing, then `dockerd --bridge=none
  --iptables=false --ip6tables=false` with its data under `<state_dir>` (default `.protege/docker`), its
  own unix socket there, and a pid file and log beside it. It never creates networks: containers use
  `--network none`, builds that install packages use `--network host`. Clients find it through
  `DOCKER_HOST=unix://<socket>` (`protege docker env` prints the export; `engine_host()` finds it too).
- **The base image** (no registry is reachable here): `debootstrap --variant=minbase --include=BASE_PACKAGES
  bookworm` from the Debian mirror apt already uses, tarred once into `<cache_dir>` (default
  `/var/cache/protege`, outside the repository, so a fresh clone on the same machine reuses it) and
  `docker import`ed as `LOCAL_BASE`; both are reused while they exist.
- **Demo instance images** (`protege-demo/<repo>:1.0`, the demo tasks' `image` column): the base plus
  pytest and the demo repository at base_commit in /testbed, owned by the sandbox user, so the Docker
  sandbox and Docker grading run the bundled demo set.

Anything that cannot be done (not root and no daemon, no debootstrap, a failed build) is an `EngineError`
whose message says what and why.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from protege.image_refs import image_ref
from protege.services import pid_alive

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STATE_DIR = Path(".protege/docker")
DEFAULT_CACHE_DIR = Path(os.environ.get("PROTEGE_CACHE_DIR", "/var/cache/protege"))
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "git", "ca-certificates")
LOCAL_BASE = f"protege/base:{SUITE}-minbase"
"""The imported debootstrap image (local engine)."""
PUBLIC_BASE = "python:3.11-slim-bookworm"
"""Base of the demo images on a daemon that can pull (a developer's Docker)."""
DEMO_PYTEST = "pytest==9.2.0"
"""pytest in the demo instance images: the version requirements.lock pins, so verdicts match the local backend."""
SANDBOX_UID = 10001
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 20.0
_SOCKET_MAX = 100  # AF_UNIX paths are limited to 108 bytes


class EngineError(RuntimeError):
    """The engine could not be found, started, stopped or used; the message says which and why."""


@dataclass(frozen=True)
class Engine:
    """A reachable daemon: `host` is what DOCKER_HOST must be for clients; `managed` if we started it."""

    host: str
    managed: bool
    base_image: str


# --------------------------------------------------------------------------------------------------
# Finding and starting the daemon
# --------------------------------------------------------------------------------------------------


def _paths(state_dir: Path) -> dict[str, Path]:
    state = state_dir.resolve()
    sock = state / "docker.sock"
    if len(str(sock)) > _SOCKET_MAX:  # a deep checkout: keep the socket path short
        digest = hashlib.sha256(str(state).encode()).hexdigest()[:12]
        sock = Path(tempfile.gettempdir()) / f"protege-docker-{digest}.sock"
    digest = hashlib.sha256(str(state).encode()).hexdigest()[:12]
    return {
        "state": state,
        "data": state / "data",
        # containerd's own sockets live under exec-root: keep it short too
        "exec": Path(tempfile.gettempdir()) / f"protege-docker-exec-{digest}",
        "sock": sock,
        "pid": state / "dockerd.pid",
        "log": state / "dockerd.log",
    }


def ping(host: str | None, timeout_s: float = 5.0) -> str | None:
    """None when a daemon answers at `host` (None = the client's default), else why not."""
    import docker

    try:
        client = docker.DockerClient(base_url=host, timeout=int(timeout_s)) if host else docker.from_env()
        client.ping()
        client.close()
        return None
    except Exception as err:  # DockerException, requests' errors, FileNotFoundError ...
        text = str(err)
        for marker, short in (
            ("FileNotFoundError", "no such socket"),
            ("ConnectionRefused", "connection refused"),
            ("PermissionError", "permission denied"),
        ):
            if marker in text:
                return short
        return f"{type(err).__name__}: {text.splitlines()[0][:160] if text else ''}"


def managed_host(state_dir: Path = DEFAULT_STATE_DIR) -> str:
    return f"unix://{_paths(state_dir)['sock']}"


def engine_host(state_dir: Path = DEFAULT_STATE_DIR) -> tuple[str | None, str]:
    """(DOCKER_HOST value of a live daemon or None, a one-line account of what was tried).

    Order: `DOCKER_HOST` from the environment, this project's managed daemon, the client's default socket.
    """
    tried = []
    candidates = []
    if os.environ.get("DOCKER_HOST"):
        candidates.append(("DOCKER_HOST", os.environ["DOCKER_HOST"]))
    candidates.append(("managed", managed_host(state_dir)))
    candidates.append(("default", "unix:///var/run/docker.sock"))
    for label, host in candidates:
        problem = ping(host)
        if problem is None:
            return host, f"{label} daemon at {host}"
        tried.append(f"{label} {host}: {problem}")
    return None, "no Docker daemon answers (" + "; ".join(tried) + ")"


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _apt_install(package: str) -> None:
    """apt-get install `package` (root only), with `apt-get update` first when the index is stale."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", package]
    if subprocess.run(install, env=env, capture_output=True).returncode == 0:
        return
    for argv in (["apt-get", "update", "-q"], install):
        result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise EngineError(f"{' '.join(argv[:2])} {package} failed: {result.stderr.strip()[-400:]}")


def start_daemon(state_dir: Path = DEFAULT_STATE_DIR, timeout_s: float = START_TIMEOUT_S) -> str:
    """Start this project's dockerd (idempotent); returns its DOCKER_HOST. Root only."""
    paths = _paths(state_dir)
    host = f"unix://{paths['sock']}"
    if ping(host) is None:
        return host
    if os.geteuid() != 0:
        raise EngineError(
            "no Docker daemon answers and starting one needs root (run as root, or start Docker)"
        )
    if shutil.which("dockerd") is None:
        _apt_install("docker.io")
    pid = _read_pid(paths["pid"])
    if pid and pid_alive(pid):
        raise EngineError(f"dockerd (pid {pid}) is running but does not answer at {host}; see {paths['log']}")
    for key in ("data", "exec"):
        paths[key].mkdir(parents=True, exist_ok=True)
    paths["sock"].unlink(missing_ok=True)
    argv = [
        "dockerd",
        "--bridge=none",
        "--iptables=false",
        "--ip6tables=false",
        "--data-root",
        str(paths["data"]),
        "--exec-root",
        str(paths["exec"]),
        "--pidfile",
        str(paths["state"] / "dockerd.daemon.pid"),
        "-H",
        host,
    ]
    with open(paths["log"], "ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, env=_daemon_env()
        )
    paths["pid"].write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EngineError(f"dockerd exited with {proc.returncode}: {_tail(paths['log'])}")
        if ping(host, timeout_s=2) is None:
            return host
        time.sleep(0.5)
    raise EngineError(f"dockerd did not answer at {host} within {timeout_s:g} s: {_tail(paths['log'])}")


def _daemon_env() -> dict[str, str]:
    # The daemon needs PATH (containerd, runc) and nothing else of ours: no API keys reach it.
    return {"PATH": os.environ.get("PATH", os.defpath), "HOME": "/root"}


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def stop_daemon(state_dir: Path = DEFAULT_STATE_DIR) -> str:
    """Stop this project's dockerd by its pid file (SIGTERM, SIGKILL after a grace); what happened."""
    paths = _paths(state_dir)
    pid = _read_pid(paths["pid"])
    if pid is None or not pid_alive(pid):
        paths["pid"].unlink(missing_ok=True)
        return "managed dockerd: not running"
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    if "dockerd" not in cmdline or str(paths["data"]) not in cmdline:
        raise EngineError(f"pid {pid} in {paths['pid']} is not this project's dockerd ({cmdline[:80]})")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.2)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    paths["pid"].unlink(missing_ok=True)
    return f"managed dockerd (pid {pid}): stopped"


# --------------------------------------------------------------------------------------------------
# The base image
# --------------------------------------------------------------------------------------------------


def debian_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt already uses (deb822 `URIs:` or one-line `deb` entries serving SUITE)."""
    files = [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file() or path.suffix not in (".list", ".sources"):
            continue
        text = path.read_text(errors="replace")
        for block in re.split(r"\n\s*\n", text):
            uris = re.search(r"^URIs:\s*(\S+)", block, re.MULTILINE)
            suites = re.search(r"^Suites:\s*(.+)$", block, re.MULTILINE)
            if uris and suites and SUITE in suites.group(1).split() and "security" not in uris.group(1):
                return uris.group(1)
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and SUITE in parts[2:] and "security" not in line:
                return next(p for p in parts[1:] if "://" in p)
    return "http://deb.debian.org/debian"


def base_tarball(cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """The cached debootstrap tarball's path; its name carries the suite and the package list."""
    key = hashlib.sha256(" ".join((SUITE, *BASE_PACKAGES)).encode()).hexdigest()[:12]
    return cache_dir / f"{SUITE}-minbase-{key}.tar"


def _image_exists(name: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode == 0


def ensure_base_image(cache_dir: Path = DEFAULT_CACHE_DIR, log=print) -> str:
    """LOCAL_BASE, imported from the cached debootstrap tarball (made first when missing)."""
    if _image_exists(LOCAL_BASE):
        return LOCAL_BASE
    tarball = base_tarball(cache_dir)
    if not tarball.is_file():
        _debootstrap(tarball, log)
    log(f"docker: importing {tarball} as {LOCAL_BASE}")
    with open(tarball, "rb") as handle:
        _docker(["import", "-", LOCAL_BASE], stdin=handle)
    return LOCAL_BASE


def _debootstrap(tarball: Path, log) -> None:
    if os.geteuid() != 0:
        raise EngineError("making the base image needs debootstrap as root")
    if shutil.which("debootstrap") is None:
        _apt_install("debootstrap")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    mirror = debian_mirror()
    started = time.monotonic()
    log(f"docker: debootstrap {SUITE} from {mirror} (minutes; cached at {tarball})")
    with tempfile.TemporaryDirectory(dir=tarball.parent, prefix="rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        argv = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            SUITE,
            str(rootfs),
            mirror,
        ]
        try:
            result = subprocess.run(argv, capture_output=True, text=True)
        finally:
            _unmount_under(rootfs)  # a failed debootstrap can leave the chroot's /proc, /sys mounted
        if result.returncode != 0:
            raise EngineError(f"debootstrap failed ({result.returncode}): {result.stdout.strip()[-400:]}")
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True)
        partial.replace(tarball)  # atomic: a crashed run never leaves a half tarball under the final name
    log(f"docker: base rootfs made in {time.monotonic() - started:.0f} s")


def _unmount_under(root: Path) -> None:
    """Lazily unmount every mount point below `root` (deepest first); only paths under root are touched."""
    prefix = str(root.resolve()) + "/"
    try:
        points = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _docker(args: list[str], stdin=None, timeout: float | None = None) -> str:
    result = subprocess.run(["docker", *args], stdin=stdin, capture_output=True, timeout=timeout)
    if result.returncode != 0:
        raise EngineError(
            f"docker {' '.join(args[:3])} failed: {result.stderr.decode(errors='replace').strip()[-600:]}"
        )
    return result.stdout.decode(errors="replace")


def up(state_dir: Path = DEFAULT_STATE_DIR, cache_dir: Path = DEFAULT_CACHE_DIR, log=print) -> Engine:
    """A reachable daemon (an existing one, else ours) with its base image; DOCKER_HOST set in os.environ."""
    host, _ = engine_host(state_dir)
    managed = host == managed_host(state_dir)
    if host is None:
        host, managed = start_daemon(state_dir), True
    os.environ["DOCKER_HOST"] = host
    base = ensure_base_image(cache_dir, log) if managed else PUBLIC_BASE
    return Engine(host=host, managed=managed, base_image=base)


# --------------------------------------------------------------------------------------------------
# Demo instance images
# --------------------------------------------------------------------------------------------------

HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
"""Builds trust what the host trusts (a TLS-inspecting proxy's CA, here); used during the build only."""
DEMO_ENV_DOCKERFILE = f"""\
ARG BASE_IMAGE
FROM ${{BASE_IMAGE}}
COPY build-ca.crt /tmp/build-ca.crt
RUN (command -v git >/dev/null || (apt-get update -q && apt-get install -y -q --no-install-recommends git)) \\
 && python3 -m venv /opt/testbed-env \\
 && PIP_CERT=/tmp/build-ca.crt /opt/testbed-env/bin/pip install -q --no-cache-dir {DEMO_PYTEST} \\
 && rm /tmp/build-ca.crt \\
 && groupadd --gid {SANDBOX_UID} protege && useradd --create-home --uid {SANDBOX_UID} --gid {SANDBOX_UID} protege
ENV PATH=/opt/testbed-env/bin:$PATH
"""
DEMO_INSTANCE_DOCKERFILE = f"""\
ARG ENV_IMAGE
FROM ${{ENV_IMAGE}}
COPY --chown={SANDBOX_UID}:{SANDBOX_UID} testbed /testbed
RUN git config --system --add safe.directory /testbed
WORKDIR /testbed
USER {SANDBOX_UID}:{SANDBOX_UID}
"""


def demo_env_image(base: str) -> str:
    digest = hashlib.sha256((base + DEMO_ENV_DOCKERFILE).encode()).hexdigest()[:12]
    return f"protege-demo/env:{digest}"


def build_demo_images(base: str, log=print, force: bool = False) -> list[str]:
    """The instance images (their `image` column) of the demo tasks that need only pytest, each built once;
    returns their names. `protege.environment_images.build_demo_images` builds these and the others."""
    from protege.demo.build import build_repo
    from protege.demo.spec import load_specs

    env_image = demo_env_image(base)
    built = []
    with tempfile.TemporaryDirectory(prefix="protege-demo-images-") as tmp:
        if force or not _image_exists(env_image):
            context = Path(tmp) / "env"
            context.mkdir()
            (context / "Dockerfile").write_text(DEMO_ENV_DOCKERFILE)
            _copy_ca(context / "build-ca.crt")
            log(f"docker: building {env_image} (pip needs --network host)")
            _docker(
                [
                    "build",
                    "-q",
                    "--network",
                    "host",
                    "--build-arg",
                    f"BASE_IMAGE={base}",
                    "-t",
                    env_image,
                    str(context),
                ]
            )
        for spec in load_specs():
            if (
                spec.environment is not None
            ):  # an environment of its own: protege.environment_images builds it
                continue
            name = spec_image(spec)
            built.append(name)
            if not force and _image_exists(name) and _label(name, "protege.env") == env_image:
                continue
            context = Path(tmp) / spec.name
            build_repo(spec, context / "repo").rename(context / "testbed")
            (context / "Dockerfile").write_text(DEMO_INSTANCE_DOCKERFILE)
            log(f"docker: building {name}")
            _docker(
                [
                    "build",
                    "-q",
                    "--network",
                    "none",
                    "--build-arg",
                    f"ENV_IMAGE={env_image}",
                    "--label",
                    f"protege.env={env_image}",
                    "-t",
                    name,
                    str(context),
                ]
            )
    return built


def _copy_ca(dest: Path) -> None:
    if HOST_CA_BUNDLE.is_file():
        shutil.copyfile(HOST_CA_BUNDLE, dest)
    else:  # no host bundle: the image's own ca-certificates is used
        dest.write_text("")


def spec_image(spec) -> str:
    """The `image` column the demo task set gives this task (protege.demo.taskset)."""
    return f"{spec.repo}:{spec.version}"


def _label(image: str, key: str) -> str:
    try:
        return _docker(
            ["image", "inspect", "--format", f'{{{{ index .Config.Labels "{key}" }}}}', image]
        ).strip()
    except EngineError:
        return ""


# --------------------------------------------------------------------------------------------------
# Project images (`make images`)
# --------------------------------------------------------------------------------------------------


def git_sha() -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def build_images(
    kinds: list[str], base: str | None, build_args: dict[str, str], log=print
) -> dict[str, dict]:
    """`docker build` images/<kind>.Dockerfile for each kind, tagged image_ref(kind, git sha); `base` None
    keeps each Dockerfile's own pinned base (a daemon that can pull).

    Returns {kind: {"image", "seconds", "size_mb"}}. Builds use `--network host` (pip and apt reach the
    package registries); the context is the repository root, filtered by .dockerignore.
    """
    sha = git_sha()
    results = {}
    ca = PROJECT_ROOT / "images" / "build-ca" / "build-ca.crt"  # gitignored; the Dockerfiles COPY the folder
    _copy_ca(ca)
    try:
        for kind in kinds:
            results[kind] = _build_one(kind, sha, base, build_args, log)
    finally:
        ca.unlink(missing_ok=True)
    return results


def _build_one(kind: str, sha: str, base: str | None, build_args: dict[str, str], log) -> dict:
    ref = image_ref(kind, sha)
    args = {"GIT_COMMIT": sha, **({"BASE_IMAGE": base} if base else {}), **build_args}
    argv = ["build", "--network", "host", "-f", f"images/{kind}.Dockerfile", "-t", ref]
    for key, value in args.items():
        argv += ["--build-arg", f"{key}={value}"]
    log(f"docker: building {ref}")
    started = time.monotonic()
    env = dict(os.environ, DOCKER_BUILDKIT="0")  # the classic builder: no buildx plugin needed
    result = subprocess.run(["docker", *argv, "."], cwd=PROJECT_ROOT, env=env, check=False)
    if result.returncode != 0:
        raise EngineError(f"docker build of images/{kind}.Dockerfile failed ({result.returncode})")
    seconds = time.monotonic() - started
    size = int(_docker(["image", "inspect", "--format", "{{.Size}}", ref]).strip())
    log(f"docker: {ref}: {size / 2**20:.0f} MiB, built in {seconds:.0f} s")
    return {"image": ref, "seconds": round(seconds, 1), "size_mb": round(size / 2**20)}
