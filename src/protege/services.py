"""Local services on loopback: an S3 server (npm s3rver) and an MLflow tracking server.

`protege services up|down|status` (and `LocalServices` from Python, as the test fixtures do):

- **s3**: s3rver, file-backed under `<data_dir>/s3`, enforcing SigV4 with the store's access/secret
  key (s3rver 3.7 hard-codes `S3RVER/S3RVER`; a tiny Node launcher swaps in the configured pair).
- **mlflow**: `mlflow server` with a sqlite backend `<data_dir>/mlflow.db`, artifacts proxied to
  `s3://<mlflow_artifacts_bucket>/artifacts` on that s3rver (the bucket is created first).

Both start with a minimal environment (`service_env`): PATH, HOME, locale and their own settings and
credentials, never the caller's API keys or other secrets.

Each service runs in its own session (process group) with `<data_dir>/run/<name>.pid` and
`<data_dir>/logs/<name>.log`. `up` is idempotent: a live, healthy service is left alone; a stale pid
file is removed. `down` stops by pid only (SIGTERM to the process group, SIGKILL after
`stop_grace_s`), and only a process whose command line names this data_dir. Health: s3 = bucket
listing with the keys; mlflow = `GET /health`.

Clients never depend on this module: they read endpoints and credentials from config or the usual
env vars (`AWS_*`, `MLFLOW_*`), so the same code talks to MinIO/AWS and a remote MLflow.
Run: `protege services up` (or `make services-up`), then `eval "$(protege services env)"`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from protege.config import ServicesConfig, StoreConfig, TrackingConfig

LOOPBACK = "127.0.0.1"
PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Runs s3rver with the configured key pair instead of its hard-coded S3RVER/S3RVER (keys come via env
# so they never show up in `ps`). The module cache makes `account` the same object s3rver uses.
S3RVER_LAUNCHER = r"""
const [moduleDir, directory, address, port] = process.argv.slice(1);
const S3rver = require(moduleDir);
const account = require(moduleDir + '/lib/models/account').DUMMY_ACCOUNT;
account.revokeAccessKey('S3RVER');
account.createKeyPair(process.env.S3RVER_ACCESS_KEY, process.env.S3RVER_SECRET_KEY);
new S3rver({ directory, address, port: Number(port), silent: false, vhostBuckets: false })
  .run()
  .then(({ address, port }) => console.log(`s3rver listening on ${address}:${port}`))
  .catch(err => { console.error(err); process.exit(1); });
"""


# What a service process inherits from the caller's environment: the basics a process needs, never the
# caller's API keys or other secrets (a local server has no use for ANTHROPIC_API_KEY).
_INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME")
_SECRET_MARKERS = ("KEY", "SECRET", "TOKEN", "PASSWORD", "CREDENTIAL", "AUTH")


def service_env(own: dict[str, str], prefixes: tuple[str, ...] = ()) -> dict[str, str]:
    """A minimal environment for a service process: _INHERITED_ENV from ours, our variables starting
    with one of `prefixes` unless their names look like secrets (MLFLOW_TRACKING_PASSWORD stays out),
    then `own` (the service's own settings and credentials) on top."""
    env = {name: os.environ[name] for name in _INHERITED_ENV if name in os.environ}
    for name, value in os.environ.items():
        if name.startswith(prefixes) and not any(marker in name for marker in _SECRET_MARKERS):
            env[name] = value
    return env | own


class ServiceError(RuntimeError):
    """A local service could not be started, checked or stopped; the message says which and why."""


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int | None
    url: str
    running: bool
    healthy: bool
    detail: str


@dataclass(frozen=True)
class _Service:
    name: str
    argv: list[str]
    env: dict[str, str]
    url: str
    port: int
    health: Callable[[], str | None]
    """None when healthy, else why not."""


def s3_problem(store: StoreConfig, timeout_s: float) -> str | None:
    """Why the S3 endpoint of `store` is not usable (one quick bucket listing), or None when it answers."""
    from protege.store import make_client

    quick = store.model_copy(
        update={"max_retries": 0, "connect_timeout_s": timeout_s, "read_timeout_s": timeout_s}
    )
    try:
        make_client(quick).list_buckets()
    except Exception as err:  # noqa: BLE001 - any failure means "not usable"; say why
        return f"bucket listing failed: {type(err).__name__}: {str(err)[:200]}"
    return None


def mlflow_problem(url: str, timeout_s: float) -> str | None:
    """Why the MLflow server at `url` is not usable (its /health), or None when it answers 200."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout_s) as reply:
            return None if reply.status == 200 else f"/health answered {reply.status}"
    except OSError as err:
        return f"/health failed: {err}"


class LocalServices:
    """Start, check and stop s3rver + MLflow for one data_dir. Usable as a context manager."""

    def __init__(self, cfg: ServicesConfig, store: StoreConfig, emit: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self.data_dir = Path(cfg.data_dir).resolve()
        self._store = store
        self._emit = emit
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    # ---- endpoints a client needs -----------------------------------------------------------------

    @property
    def s3_url(self) -> str:
        return f"http://{LOOPBACK}:{self.cfg.s3_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{LOOPBACK}:{self.cfg.mlflow_port}"

    def store_config(self) -> StoreConfig:
        """The store config that reaches the local s3rver (same keys and bucket)."""
        return self._store.model_copy(update={"endpoint": f"{LOOPBACK}:{self.cfg.s3_port}", "secure": False})

    def tracking_config(self, base: TrackingConfig | None = None) -> TrackingConfig:
        return (base or TrackingConfig()).model_copy(update={"uri": self.mlflow_url})

    def env(self, include_secret: bool = True) -> dict[str, str]:
        """Environment that points S3 and MLflow clients (ours, boto3, mlflow) at these services."""
        env = {
            "PROTEGE_S3_ENDPOINT": f"{LOOPBACK}:{self.cfg.s3_port}",
            "AWS_ENDPOINT_URL": self.s3_url,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_url,
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "AWS_ACCESS_KEY_ID": self._store.access_key.get_secret_value(),
            "AWS_DEFAULT_REGION": self._store.region,
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        if include_secret:
            env["AWS_SECRET_ACCESS_KEY"] = self._store.secret_key.get_secret_value()
        return env

    # ---- lifecycle --------------------------------------------------------------------------------

    def up(self) -> None:
        """Start whatever is not running and healthy; ServiceError (with the log tail) on failure."""
        self.start_s3()
        self.start_mlflow()

    def start_s3(self) -> None:
        """Start s3rver (if needed) and create the MLflow artifacts bucket and the store's bucket."""
        from protege.store import S3ArtifactStore

        for sub in ("s3", "run", "logs"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        self._ensure(self._s3())
        store = S3ArtifactStore.from_config(self.store_config())
        for bucket in (self.cfg.mlflow_artifacts_bucket, self._store.bucket):
            store.ensure_bucket(bucket)

    def start_mlflow(self) -> None:
        """Start the MLflow server (if needed); s3 must be up (it holds the artifacts)."""
        if self._live_pid("s3", clean=False) is None:
            raise ServiceError("mlflow: the s3 service is not running; start it first (start_s3 or up)")
        self._ensure(self._mlflow())

    def down(self) -> None:
        """Stop both services (MLflow first), by pid file only."""
        for name in ("mlflow", "s3"):
            self.stop(name)

    def stop(self, name: str) -> None:
        """Stop one service ('s3' or 'mlflow') by its pid file; a no-op when it is not running."""
        self._stop(name)

    def status(self) -> list[ServiceStatus]:
        result = []
        for service in (self._s3(), self._mlflow()):
            pid = self._live_pid(service.name, clean=False)
            reason = service.health() if pid else "not running"
            result.append(
                ServiceStatus(service.name, pid, service.url, pid is not None, reason is None, reason or "ok")
            )
        return result

    def __enter__(self) -> LocalServices:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # ---- service definitions ----------------------------------------------------------------------

    def _s3(self) -> _Service:
        env = service_env(
            {
                "S3RVER_ACCESS_KEY": self._store.access_key.get_secret_value(),
                "S3RVER_SECRET_KEY": self._store.secret_key.get_secret_value(),
            }
        )
        argv = [
            self.cfg.node_bin,
            "-e",
            S3RVER_LAUNCHER,
            str(_s3rver_module(self.cfg.s3rver_module)),
            str(self.data_dir / "s3"),
            LOOPBACK,
            str(self.cfg.s3_port),
        ]
        return _Service("s3", argv, env, self.s3_url, self.cfg.s3_port, self._s3_health)

    def _mlflow(self) -> _Service:
        env = service_env(self.env() | {"DO_NOT_TRACK": "true"}, prefixes=("MLFLOW_",))
        argv = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.data_dir / 'mlflow.db'}",
            "--artifacts-destination",
            f"s3://{self.cfg.mlflow_artifacts_bucket}/artifacts",
            "--host",
            LOOPBACK,
            "--port",
            str(self.cfg.mlflow_port),
            "--workers",
            "1",
        ]
        return _Service("mlflow", argv, env, self.mlflow_url, self.cfg.mlflow_port, self._mlflow_health)

    def _s3_health(self) -> str | None:
        return s3_problem(self.store_config(), self.cfg.health_timeout_s)

    def _mlflow_health(self) -> str | None:
        return mlflow_problem(self.mlflow_url, self.cfg.health_timeout_s)

    # ---- start / stop -----------------------------------------------------------------------------

    def _pid_file(self, name: str) -> Path:
        return self.data_dir / "run" / f"{name}.pid"

    def _log_file(self, name: str) -> Path:
        return self.data_dir / "logs" / f"{name}.log"

    def _ensure(self, service: _Service) -> None:
        pid = self._live_pid(service.name, clean=True)
        if pid is not None:
            if service.health() is None:
                self._emit(f"{service.name}: already running (pid {pid}) at {service.url}")
                return
            self._emit(f"{service.name}: pid {pid} is running but not healthy yet; waiting")
        else:
            if _port_in_use(service.port):
                raise ServiceError(
                    f"{service.name}: port {service.port} is already in use by a process protege did not start "
                    f"(no live pid file in {self.data_dir / 'run'}); pick another port (services.{service.name}_port)"
                )
            pid = self._spawn(service)
        started = time.monotonic()
        self._wait_healthy(service, pid, started)
        self._emit(
            f"{service.name}: healthy at {service.url} (pid {pid}, {time.monotonic() - started:.1f} s)"
        )

    def _spawn(self, service: _Service) -> int:
        self._emit(f"{service.name}: starting on {service.url} (log {self._log_file(service.name)})")
        with self._log_file(service.name).open("wb") as log:
            proc = subprocess.Popen(
                service.argv,
                env=service.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.data_dir,
                start_new_session=True,
            )
        self._children[service.name] = proc
        self._pid_file(service.name).write_text(f"{proc.pid}\n")
        return proc.pid

    def _wait_healthy(self, service: _Service, pid: int, started: float) -> None:
        next_note = started + self.cfg.progress_interval_s
        while True:
            if not pid_alive(pid):
                self._pid_file(service.name).unlink(missing_ok=True)
                raise ServiceError(f"{service.name}: exited during startup\n{self._log_tail(service.name)}")
            reason = service.health()
            if reason is None:
                return
            now = time.monotonic()
            if now - started > self.cfg.startup_timeout_s:
                self._stop(service.name)
                raise ServiceError(
                    f"{service.name}: not healthy after {self.cfg.startup_timeout_s:.0f} s ({reason})\n"
                    f"{self._log_tail(service.name)}"
                )
            if now >= next_note:
                self._emit(f"{service.name}: waiting for health ({now - started:.0f} s): {reason}")
                next_note = now + self.cfg.progress_interval_s
            time.sleep(self.cfg.poll_interval_s)

    def _stop(self, name: str) -> None:
        pid = self._live_pid(name, clean=True)
        if pid is None:
            self._emit(f"{name}: not running")
            return
        self._emit(f"{name}: stopping pid {pid}")
        _signal_group(pid, signal.SIGTERM)
        if not _wait_gone(pid, self.cfg.stop_grace_s, self.cfg.poll_interval_s):
            self._emit(f"{name}: still alive after {self.cfg.stop_grace_s:.0f} s; SIGKILL")
            _signal_group(pid, signal.SIGKILL)
            _wait_gone(pid, self.cfg.stop_grace_s, self.cfg.poll_interval_s)
        child = self._children.pop(name, None)
        if child is not None:
            child.wait()
        self._pid_file(name).unlink(missing_ok=True)
        self._emit(f"{name}: stopped")

    def _live_pid(self, name: str, clean: bool) -> int | None:
        """The pid in the pid file if that process is alive and is ours (its command line names
        this data_dir); otherwise None, removing the stale pid file when `clean`."""
        path = self._pid_file(name)
        try:
            pid = int(path.read_text().strip())
        except (OSError, ValueError):
            if clean:
                path.unlink(missing_ok=True)
            return None
        if pid_alive(pid) and str(self.data_dir) in _cmdline(pid):
            return pid
        if clean:
            self._emit(f"{name}: removing stale pid file {path} (pid {pid} is gone or not ours)")
            path.unlink(missing_ok=True)
        return None

    def _log_tail(self, name: str) -> str:
        try:
            lines = self._log_file(name).read_text(errors="replace").splitlines()
        except OSError:
            return f"(no log at {self._log_file(name)})"
        tail = "\n".join(f"  | {line}" for line in lines[-self.cfg.log_tail_lines :])
        return f"last {self.cfg.log_tail_lines} lines of {self._log_file(name)}:\n{tail}"


# --------------------------------------------------------------------------------------------------
# Process helpers
# --------------------------------------------------------------------------------------------------


def _s3rver_module(configured: str) -> Path:
    path = Path(configured)
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, PROJECT_ROOT / path]
    for candidate in candidates:
        if (candidate / "package.json").is_file():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise ServiceError(
        f"s3rver is not installed (looked in {tried}); run `make setup` "
        "(npm install --prefix .tools s3rver@3.7.1) or set services.s3rver_module"
    )


def _reap(pid: int) -> None:
    # If the pid is our child and has exited, collect it so it stops counting as alive (a zombie).
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not; our own exited child is reaped first)."""
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _proc_state(pid) != "Z"


def _proc_state(pid: int) -> str:
    try:
        # /proc/<pid>/stat: "pid (comm) S ..."; comm may contain spaces, so split after the last ')'.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        reply = subprocess.run(
            ["ps", "-p", str(pid), "-o", "command="], capture_output=True, text=True, check=False
        )
        return reply.stdout


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the service's process group (it is a session leader), or just the pid if it is not."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        return


def _group_alive(pid: int) -> bool:
    _reap(pid)
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid_alive(pid) or _group_has_live_member(pid)


def _group_has_live_member(pgid: int) -> bool:
    # The leader may be a zombie awaiting its parent while workers (uvicorn) still run.
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _wait_gone(pid: int, timeout_s: float, poll_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _group_alive(pid):
            return True
        time.sleep(poll_s)
    return not _group_alive(pid)


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((LOOPBACK, port)) == 0


def free_port() -> int:
    """A currently free loopback port (for tests and ad-hoc instances)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]
