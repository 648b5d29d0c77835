"""Local services: the real `protege services` CLI, pid files, idempotency, stale pids, clear failures."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import protege
from protege.config import ServicesConfig, StoreConfig
from protege.services import LocalServices, ServiceError, free_port
from protege.store import S3ArtifactStore, StoreError

SRC = Path(protege.__file__).resolve().parents[1]


def protege_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": str(SRC), "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run(
        [sys.executable, "-m", "protege.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def s3_only(tmp_path: Path, **overrides) -> LocalServices:
    cfg = ServicesConfig(
        data_dir=str(tmp_path / "data"), s3_port=free_port(), mlflow_port=free_port(), **overrides
    )
    return LocalServices(cfg, StoreConfig(access_key="k1", secret_key="s1"), emit=lambda line: None)


def test_cli_up_status_down_on_free_ports(tmp_path: Path):
    data = tmp_path / "data"
    s3_port, mlflow_port = free_port(), free_port()
    opts = [f"services.data_dir={data}", f"services.s3_port={s3_port}", f"services.mlflow_port={mlflow_port}"]

    up = protege_cli("services", "up", *opts)
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{mlflow_port}" in up.stdout
    assert f"export MLFLOW_S3_ENDPOINT_URL=http://127.0.0.1:{s3_port}" in up.stdout
    pids = {name: int((data / "run" / f"{name}.pid").read_text()) for name in ("s3", "mlflow")}
    assert all(alive(pid) for pid in pids.values())
    assert (data / "mlflow.db").is_file() and (data / "logs" / "mlflow.log").is_file()

    again = protege_cli("services", "up", *opts)
    assert again.returncode == 0, again.stderr
    assert f"s3: already running (pid {pids['s3']})" in again.stdout
    assert f"mlflow: already running (pid {pids['mlflow']})" in again.stdout
    assert {name: int((data / "run" / f"{name}.pid").read_text()) for name in pids} == pids

    status = protege_cli("services", "status", *opts)
    assert status.returncode == 0, status.stdout
    for name, pid in pids.items():
        line = next(row for row in status.stdout.splitlines() if row.startswith(name))
        assert str(pid) in line and "healthy" in line

    down = protege_cli("services", "down", *opts)
    assert down.returncode == 0, down.stderr
    assert not any(alive(pid) for pid in pids.values())
    assert not list((data / "run").glob("*.pid"))
    after = protege_cli("services", "status", *opts)
    assert after.returncode == 1 and "not running" in after.stdout


def test_s3_keys_are_enforced_and_buckets_created(tmp_path: Path):
    with_s3 = s3_only(tmp_path)
    with_s3.start_s3()
    try:
        store = S3ArtifactStore.from_config(with_s3.store_config())
        assert store.list("s3://mlflow/") == [] and store.list("s3://protege/") == []
        wrong = with_s3.store_config().model_copy(update={"access_key": StoreConfig().access_key})
        assert wrong.access_key.get_secret_value() != "k1"
        with pytest.raises(StoreError, match="credentials rejected"):
            S3ArtifactStore.from_config(wrong).list("s3://protege/")
    finally:
        with_s3.down()


def test_stale_pid_file_is_cleaned_and_foreign_pid_never_killed(tmp_path: Path):
    services = s3_only(tmp_path)
    run_dir = services.data_dir / "run"
    run_dir.mkdir(parents=True)
    finished = subprocess.Popen(["true"])
    finished.wait()
    (run_dir / "s3.pid").write_text(f"{finished.pid}\n")
    stranger = subprocess.Popen(["sleep", "60"])  # alive, but not a service of this data_dir
    (run_dir / "mlflow.pid").write_text(f"{stranger.pid}\n")
    try:
        services.start_s3()
        new_pid = int((run_dir / "s3.pid").read_text())
        assert new_pid != finished.pid and alive(new_pid)

        services.down()
        assert not alive(new_pid)
        assert stranger.poll() is None, "down must only stop processes started for this data_dir"
        assert not list(run_dir.glob("*.pid"))
    finally:
        stranger.kill()
        stranger.wait()
        services.down()


def test_port_taken_by_someone_else_is_a_clear_error(tmp_path: Path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        services = s3_only(tmp_path)
        services.cfg.s3_port = sock.getsockname()[1]
        with pytest.raises(ServiceError, match=rf"s3: port {services.cfg.s3_port} is already in use"):
            services.start_s3()


def test_failed_start_shows_the_log_tail(tmp_path: Path):
    fake_node = tmp_path / "fake-node"
    fake_node.write_text("#!/bin/sh\necho 'fatal: cannot bind, kaboom' >&2\nexit 3\n")
    fake_node.chmod(0o755)
    services = s3_only(tmp_path, node_bin=str(fake_node))
    with pytest.raises(ServiceError, match=r"(?s)s3: exited during startup.*s3\.log.*kaboom"):
        services.start_s3()
    assert not (services.data_dir / "run" / "s3.pid").exists()


def test_missing_s3rver_and_mlflow_without_s3_are_clear_errors(tmp_path: Path):
    with pytest.raises(ServiceError, match="s3rver is not installed.*make setup"):
        s3_only(tmp_path, s3rver_module=str(tmp_path / "nowhere")).start_s3()
    with pytest.raises(ServiceError, match="s3 service is not running"):
        s3_only(tmp_path).start_mlflow()


@pytest.mark.slow
def test_services_start_with_a_minimal_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Host secrets a local server has no use for; the MLflow client password is for a remote server.
    secrets = {
        "ANTHROPIC_API_KEY": "sk-ant-host-secret",
        "OPENAI_API_KEY": "sk-host-secret",
        "GITHUB_TOKEN": "ghp-host-secret",
        "MLFLOW_TRACKING_PASSWORD": "host-secret",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "31")  # a setting, not a secret: passes through
    services = s3_only(tmp_path)
    with services:
        environ = {}
        for name in ("s3", "mlflow"):
            raw = Path(f"/proc/{services._live_pid(name, clean=False)}/environ").read_bytes()
            environ[name] = dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
    for name, env in environ.items():
        assert not set(secrets) & set(env), name
        assert not any(value in env.values() for value in secrets.values()), name
        assert env["PATH"] == os.environ["PATH"], name
    assert (environ["s3"]["S3RVER_ACCESS_KEY"], environ["s3"]["S3RVER_SECRET_KEY"]) == ("k1", "s1")
    assert environ["mlflow"]["AWS_SECRET_ACCESS_KEY"] == "s1"  # its own credentials for the store
    assert environ["mlflow"]["MLFLOW_S3_ENDPOINT_URL"] == services.s3_url
    assert environ["mlflow"]["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "31"
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in environ["s3"]
