"""Sandboxes: a task's repository at base_commit, isolated, where the agent's commands run.

`open_sandbox(cfg, task, repos_dir)` picks the backend named by `sandbox.backend`:
- `local` (`local.py`): bubblewrap on this host, confined by `confinement.py`;
- `docker` (`docker.py`) and `kubernetes` (`kubernetes.py`): the instance image, commands through the
  exec API.
All share `common.py`'s shell snippets. Each backend's module docstring says what it isolates and how.
"""

from __future__ import annotations

from pathlib import Path

from protege.agent.protocols import Sandbox
from protege.agent.sandbox.common import OutputCap
from protege.agent.sandbox.local import LocalSandbox
from protege.config import SandboxConfig
from protege.tasks import TaskInstance

__all__ = ["LocalSandbox", "OutputCap", "open_sandbox"]


def _open_local(cfg: SandboxConfig, task: TaskInstance, repos_dir: Path) -> Sandbox:
    return LocalSandbox(cfg, task, repos_dir)


def _open_docker(cfg: SandboxConfig, task: TaskInstance, repos_dir: Path) -> Sandbox:
    from protege.agent.sandbox.docker import DockerSandbox

    return DockerSandbox(cfg, task)


def _open_kubernetes(cfg: SandboxConfig, task: TaskInstance, repos_dir: Path) -> Sandbox:
    from protege.agent.sandbox.kubernetes import KubernetesSandbox

    return KubernetesSandbox(cfg, task)


def open_sandbox(cfg: SandboxConfig, task: TaskInstance, repos_dir: str | Path) -> Sandbox:
    """Start a sandbox for `task` with the configured backend (repos_dir is used by `local` only)."""
    backends = {"local": _open_local, "docker": _open_docker, "kubernetes": _open_kubernetes}
    return backends[cfg.backend](cfg, task, Path(repos_dir))
