"""Kubernetes grading backend: one pod per graded instance, from the instance's `test_spec.image`.

swebench has no Kubernetes backend, so this does what `run_instance` does to a container, to a pod:
the pod idles (`sleep infinity`), the patch file, the apply sequence and the eval script go over
`exec` (`PodSandbox` implements our `Sandbox` protocol), and the test output is read back whole. The
grading itself is `protege.grading.grade_in_sandbox`, the same code as the local backend. The pod is
deleted afterwards whatever happened; `eval.grade_max_pods` caps pods alive at once (grading.grade_batch).

Pods carry `sandbox.pod_label` (the deny-egress NetworkPolicy selects it), run with no service-account
token, die at `sandbox.pod_deadline_s` even if this process does, and get the agent pod's security
settings (`protege.agent.sandbox.kubernetes.harden`: non-root, no privilege escalation, no capabilities,
seccomp RuntimeDefault, read-only root with emptyDir copies of the writable paths, ephemeral-storage)
and its per-exec process limit. An eval script that reinstalls the package into the image's
environment needs that environment's path in `sandbox.pod_writable_paths`.
"""

from __future__ import annotations

import base64
import re
import shlex
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protege.agent.protocols import CommandResult, SandboxError
from protege.agent.sandbox.kubernetes import harden, limit_processes
from protege.config import ProtegeConfig
from protege.tasks import TaskInstance

# Bytes of a file sent per exec when writing it (base64 in argv stays far below ARG_MAX).
WRITE_CHUNK_BYTES = 64 * 1024
# How often a starting pod's phase is polled.
POD_POLL_S = 1.0
# `timeout -s KILL` exits 137; GNU timeout's own code is 124.
TIMEOUT_CODES = (124, 137)


def pod_name(instance_id: str) -> str:
    """A DNS-1123 pod name unique per grading."""
    stem = re.sub(r"[^a-z0-9-]+", "-", instance_id.lower()).strip("-")[:40]
    return f"grade-{stem}-{uuid.uuid4().hex[:8]}"


def pod_manifest(task: TaskInstance, cfg: ProtegeConfig, name: str) -> dict[str, Any]:
    """The pod: the instance image idling, capped in CPU, memory and lifetime, no API credentials."""
    sandbox = cfg.agent.sandbox
    resources = {"cpu": str(sandbox.cpu_limit), "memory": f"{sandbox.memory_limit_mb}Mi"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": sandbox.namespace,
            "labels": {sandbox.pod_label: "grading", "protege.ai/role": "grading"},
            "annotations": {"protege.ai/instance-id": task.instance_id},
        },
        "spec": harden(
            sandbox,
            {
                "restartPolicy": "Never",
                "activeDeadlineSeconds": sandbox.pod_deadline_s,
                "automountServiceAccountToken": False,
                "containers": [
                    {
                        "name": "testbed",
                        "image": sandbox.image_template.format(image=task.image),
                        "command": ["sleep", "infinity"],
                        "workingDir": sandbox.workdir,
                        "resources": {"limits": dict(resources), "requests": dict(resources)},
                    }
                ],
            },
        ),
    }


class PodSandbox:
    """The Sandbox protocol over a pod's exec API. `core` is a kubernetes CoreV1Api; `stream` is
    `kubernetes.stream.stream` (both injectable: tests pass fakes, there is no cluster here)."""

    def __init__(self, core: Any, stream: Any, task: TaskInstance, cfg: ProtegeConfig):
        self.core, self.stream, self.cfg = core, stream, cfg
        self.workdir = cfg.agent.sandbox.workdir
        self.namespace = cfg.agent.sandbox.namespace
        self.name = pod_name(task.instance_id)
        self._manifest = pod_manifest(task, cfg, self.name)

    def __enter__(self) -> PodSandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Create the pod and wait until it runs (eval.grade_pod_start_timeout_s)."""
        try:
            self.core.create_namespaced_pod(self.namespace, self._manifest)
        except Exception as err:  # ApiException, connection errors
            raise SandboxError(f"cannot create pod {self.name}: {err}") from err
        deadline = time.monotonic() + self.cfg.eval.grade_pod_start_timeout_s
        while time.monotonic() < deadline:
            phase = self.core.read_namespaced_pod(self.name, self.namespace).status.phase
            if phase == "Running":
                return
            if phase in ("Failed", "Succeeded"):
                raise SandboxError(f"pod {self.name} ended ({phase}) before grading")
            time.sleep(POD_POLL_S)
        raise SandboxError(f"pod {self.name} not running after {self.cfg.eval.grade_pod_start_timeout_s:g} s")

    def run(self, command: str, timeout: float | None = None) -> CommandResult:
        """Run `command` with bash in the pod, stdout and stderr interleaved, killed at `timeout`."""
        limit = timeout or self.cfg.agent.sandbox.command_timeout_s
        wrapped = f"timeout -s KILL {limit:g} /bin/bash -c {shlex.quote(command)} 2>&1"
        started = time.monotonic()
        try:
            resp = self.stream(
                self.core.connect_get_namespaced_pod_exec,
                self.name,
                self.namespace,
                command=limit_processes(self.cfg.agent.sandbox, ["/bin/bash", "-c", wrapped]),
                stderr=True,
                stdin=False,
                stdout=True,
                tty=False,
                _preload_content=False,
            )
            # the in-pod `timeout` kills the command; this client-side bound only guards a dead exec
            resp.run_forever(timeout=limit + self.cfg.agent.sandbox.command_timeout_s)
            code = resp.returncode
            output = resp.read_all()
            resp.close()
        except Exception as err:  # websocket and API errors
            raise SandboxError(f"exec in pod {self.name} failed: {err}") from err
        exit_code = 137 if code is None else int(code)
        return CommandResult(
            output=output,
            exit_code=exit_code,
            timed_out=code is None or exit_code in TIMEOUT_CODES,
            duration_s=time.monotonic() - started,
        )

    def write_file(self, path: str, content: str) -> None:
        data = content.encode()
        target = shlex.quote(path)
        self._checked(f"mkdir -p $(dirname {target}) && : > {target}")
        for offset in range(0, len(data), WRITE_CHUNK_BYTES):
            chunk = base64.b64encode(data[offset : offset + WRITE_CHUNK_BYTES]).decode()
            self._checked(f"echo {chunk} | base64 -d >> {target}")

    def read_file(self, path: str) -> str:
        return self._checked(f"cat {shlex.quote(path)}").output

    def diff(self) -> str:
        return self._checked(f"cd {shlex.quote(self.workdir)} && git add -A && git diff --cached").output

    def close(self) -> None:
        try:
            self.core.delete_namespaced_pod(self.name, self.namespace, grace_period_seconds=0)
        except Exception:  # already gone, or the API is unreachable: activeDeadlineSeconds reaps it
            return

    def _checked(self, command: str) -> CommandResult:
        result = self.run(command)
        if result.exit_code != 0:
            raise SandboxError(
                f"pod {self.name}: `{command[:80]}` exited {result.exit_code}: {result.output[:300]}"
            )
        return result


def open_pod_sandbox(
    cfg: ProtegeConfig, task: TaskInstance, core: Any = None, stream: Any = None
) -> PodSandbox:
    """A PodSandbox with the in-cluster (or kubeconfig) client unless `core`/`stream` are given."""
    if core is None or stream is None:
        from kubernetes import client, config
        from kubernetes.stream import stream as k8s_stream

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        core, stream = core or client.CoreV1Api(), stream or k8s_stream
    return PodSandbox(core, stream, task, cfg)


def pod_opener(cfg: ProtegeConfig, core: Any = None, stream: Any = None) -> Callable[..., PodSandbox]:
    """An `open_sandbox`-shaped callable for `protege.grading.grade` (repos_dir is unused: the image
    holds the repository at base_commit)."""

    def open_sandbox(sandbox_cfg: Any, task: TaskInstance, repos_dir: Path) -> PodSandbox:
        return open_pod_sandbox(cfg, task, core, stream)

    return open_sandbox
