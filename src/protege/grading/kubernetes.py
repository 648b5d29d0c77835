"""Kubernetes grading backend: one pod per graded instance, from the instance image (`task.image`).

swebench has no Kubernetes backend, so grading does what `run_instance` does to a container, to a pod:
the pod idles, the patch file, the apply sequence and the eval script go over `exec`, and the test
output is read back whole (`protege.grading.grade_in_sandbox`, the same code as the local backend).

The pod is the agent's (`protege.agent.sandbox.kubernetes.KubernetesSandbox`): one implementation of
the manifest, its security settings, creation with retries, waiting for Running, exec with a timeout
that kills the process group, file reads and writes, the deadline and deletion. Grading opens it with
`role="grading"`: the pod is labelled `sandbox.pod_label: grading` and `protege.ai/role: grading` (the
grading deny-egress NetworkPolicy selects it), its repository keeps the image's history as the harness
expects, and it must be Running within `eval.grade_pod_start_timeout_s`. The pod is deleted afterwards
whatever happened; `eval.grade_max_pods` caps pods alive at once (grading.grade_batch). An eval script
that reinstalls the package into the image's environment needs that environment's path in
`sandbox.pod_writable_paths`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from protege.agent.sandbox.kubernetes import KubernetesSandbox
from protege.config import ProtegeConfig
from protege.tasks import TaskInstance

ROLE = "grading"


def open_pod_sandbox(
    cfg: ProtegeConfig, task: TaskInstance, core: Any = None, stream: Any = None
) -> KubernetesSandbox:
    """A started grading pod, with the in-cluster (or kubeconfig) client unless `core`/`stream` are given."""
    sandbox = cfg.agent.sandbox.model_copy(update={"start_timeout_s": cfg.eval.grade_pod_start_timeout_s})
    return KubernetesSandbox(sandbox, task, core, stream, role=ROLE)


def pod_opener(cfg: ProtegeConfig, core: Any = None, stream: Any = None) -> Callable[..., KubernetesSandbox]:
    """An `open_sandbox`-shaped callable for `protege.grading.grade` (repos_dir is unused: the image
    holds the repository at base_commit)."""

    def open_sandbox(sandbox_cfg: Any, task: TaskInstance, repos_dir: Path) -> KubernetesSandbox:
        return open_pod_sandbox(cfg, task, core, stream)

    return open_sandbox
