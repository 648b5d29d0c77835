"""Shared fixtures: real local services on free loopback ports, started once per test session.

- `s3_server` (session): a real s3rver (npm, `make setup` installs it under .tools/) in a temp dir,
  enforcing the non-default keys below. Yields the `LocalServices`; use `s3_server.store_config()`
  for a `StoreConfig` that reaches it, `s3_server.s3_url` for its URL. About 1 s to start.
- `mlflow_server` (session): a real `mlflow server` (sqlite backend) whose artifacts are proxied to
  the `s3_server`. Yields the same `LocalServices`; use `mlflow_server.mlflow_url` or
  `mlflow_server.tracking_config()`. About 15-20 s to start on 2 cores, so only request it when needed.
- `store` (function): an `S3ArtifactStore` on a fresh, empty bucket of `s3_server`.

- `docker_engine` (session): the DOCKER_HOST of a live Docker daemon (`DOCKER_HOST`, the one `protege
  docker up` started, or the default socket) with the demo instance images built. Where none answers,
  the `docker` tier is skipped with the reason, which the report header also prints.

A missing s3rver fails loudly (the error says to run `make setup`): these are not optional tests.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from protege.config import ServicesConfig, StoreConfig
from protege.services import LocalServices, free_port
from protege.store import S3ArtifactStore

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

TEST_ACCESS_KEY = "protege-test-key"
TEST_SECRET_KEY = "protege-test-secret"


def _docker_state() -> tuple[str | None, str]:
    from protege.docker_engine import engine_host

    if not hasattr(_docker_state, "cached"):
        _docker_state.cached = engine_host()
    return _docker_state.cached


def pytest_report_header(config: pytest.Config) -> str:
    host, account = _docker_state()
    if host is None:
        return f"docker tier: SKIPPED: {account}; `make test` starts an engine as root (protege docker up)"
    return f"docker tier: {account}"


@pytest.fixture(scope="session")
def docker_engine() -> str:
    """DOCKER_HOST of a live daemon, with the demo instance images present; skips the test when none answers."""
    from protege.docker_engine import LOCAL_BASE, PUBLIC_BASE
    from protege.environment_images import build_demo_images

    host, account = _docker_state()
    if host is None:
        pytest.skip(f"docker tier: {account}; `make test` starts an engine as root (protege docker up)")
    os.environ["DOCKER_HOST"] = host
    import docker

    client = docker.from_env()
    local = any(LOCAL_BASE in image.tags for image in client.images.list(name=LOCAL_BASE.split(":")[0]))
    build_demo_images(LOCAL_BASE if local else PUBLIC_BASE, log=lambda line: None)
    return host


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServices]:
    """A real s3rver on a free loopback port with keys TEST_ACCESS_KEY / TEST_SECRET_KEY."""
    data_dir = tmp_path_factory.mktemp("services")
    cfg = ServicesConfig(data_dir=str(data_dir), s3_port=free_port(), mlflow_port=free_port())
    store = StoreConfig(access_key=TEST_ACCESS_KEY, secret_key=TEST_SECRET_KEY, bucket="protege-test")
    services = LocalServices(cfg, store, emit=lambda line: None)
    services.start_s3()
    yield services
    services.down()


@pytest.fixture(scope="session")
def mlflow_server(s3_server: LocalServices) -> Iterator[LocalServices]:
    """A real MLflow server (sqlite) with artifacts proxied to `s3_server`."""
    s3_server.start_mlflow()
    yield s3_server
    s3_server.stop("mlflow")


@pytest.fixture
def store(s3_server: LocalServices) -> S3ArtifactStore:
    """An artifact store on a fresh bucket of the session's s3rver."""
    cfg = s3_server.store_config().model_copy(update={"bucket": f"t-{uuid.uuid4().hex[:12]}"})
    artifact_store = S3ArtifactStore.from_config(cfg)
    artifact_store.ensure_bucket()
    return artifact_store
