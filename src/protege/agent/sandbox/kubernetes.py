"""Kubernetes sandbox: one pod from the task's instance image, commands through the exec stream.

The one pod implementation, for the agent's episodes and for grading (`protege.grading.kubernetes`
opens it with `role="grading"`). The pod (`pod_manifest`) runs `sleep infinity` with resource
requests = limits, no service-account token, no service links, `activeDeadlineSeconds`
(`pod_deadline_s`: the backstop if this process is SIGKILLed), and the `sandbox.pod_label` label that
the namespace's deny-egress NetworkPolicies select: `"true"` on an agent's pod, the role (`grading`,
also as `protege.ai/role`) on a grading pod (the cluster, not this code, enforces "no network").
`harden` makes it non-root (`container_user`), without privilege escalation or capabilities, under the
runtime's default seccomp profile, on a read-only root filesystem: the work tree and
`pod_writable_paths` are emptyDirs (`disk_limit_mb` each, and as ephemeral-storage limit) that an init
container fills from the image. Kubernetes has no per-pod process limit in the pod spec (that is the
kubelet's `podPidsLimit`), so every exec runs under `ulimit -u max_processes` (RLIMIT_NPROC counts the
uid's processes on the node). Creation holds a process-wide slot (`max_concurrent_starts`) until the
pod is Running (or `start_timeout_s` passes), and is retried with exponential backoff on 409/429/5xx.
The pod is deleted on close, on garbage collection, at interpreter exit, and when the start itself fails.

An agent's pod then has its repository's history past base_commit stripped (`CLEANUP_SCRIPT`); a
grading pod keeps the image's repository as it is, as swebench's harness does.

Commands run as `bash -c` under `timeout -s KILL` (see `protege.agent.sandbox.docker.ContainerShell`,
which also reads and writes files), streamed through the exec websocket with a client-side deadline of
timeout + `exec_grace_s`.

No cluster exists where this was written: it is tested at the API boundary (exact pod spec, exec
calls, deletion, the concurrency cap) against a fake CoreV1Api and a fake stream function.
"""

from __future__ import annotations

import json
import logging
import shlex
import time
import weakref
from typing import Any

from protege.agent.protocols import CommandResult, SandboxError
from protege.agent.sandbox.common import OutputCap
from protege.agent.sandbox.docker import (
    INSTANCE_ANNOTATION,
    SANDBOX_LABEL_VALUE,
    ContainerSandbox,
    ContainerShell,
    image_for,
    sandbox_name,
    start_slot,
    transient_status,
    with_backoff,
)
from protege.config import SandboxConfig
from protege.tasks import TaskInstance

log = logging.getLogger(__name__)

CONTAINER = "sandbox"
ROLE_LABEL = "protege.ai/role"
ERROR_CHANNEL = 3  # the exec websocket channel that carries the exit status
_FATAL_WAITING = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError"}
)


_INIT_MOUNT = "/protege-writable"


def harden(cfg: SandboxConfig, spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` (a pod spec with one container) made non-root, capability-less, seccomp'd, on a read-only
    root with emptyDir copies of the writable paths; returns it."""
    uid, gid = (int(part) for part in cfg.container_user.split(":"))
    size = f"{cfg.disk_limit_mb}Mi"
    container = spec["containers"][0]
    paths = list(dict.fromkeys([cfg.workdir, *cfg.pod_writable_paths]))
    volumes = [{"name": f"writable-{i}", "emptyDir": {"sizeLimit": size}} for i in range(len(paths))]
    copy = " && ".join(
        f"if [ -d {shlex.quote(p)} ]; then cp -a {shlex.quote(p)}/. {_INIT_MOUNT}/{i}/; fi"
        for i, p in enumerate(paths)
    )
    no_privileges = {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    spec["securityContext"] = {
        "runAsNonRoot": uid != 0,
        "runAsUser": uid,
        "runAsGroup": gid,
        "fsGroup": gid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    spec["volumes"] = volumes
    spec["initContainers"] = [
        {
            "name": "copy-writable",
            "image": container["image"],
            "command": ["/bin/sh", "-c", copy],
            "resources": container["resources"],
            "securityContext": dict(no_privileges),
            "volumeMounts": [
                {"name": v["name"], "mountPath": f"{_INIT_MOUNT}/{i}"} for i, v in enumerate(volumes)
            ],
        }
    ]
    container["securityContext"] = dict(no_privileges)
    container["volumeMounts"] = [
        {"name": v["name"], "mountPath": p} for v, p in zip(volumes, paths, strict=True)
    ]
    container["env"] = [{"name": "HOME", "value": "/tmp"}]
    for bound in ("requests", "limits"):
        container["resources"][bound]["ephemeral-storage"] = size
    return spec


def limit_processes(cfg: SandboxConfig, argv: list[str]) -> list[str]:
    """argv under `ulimit -u max_processes` (soft and hard, so the command cannot raise it; bash: dash has no -u)."""
    return ["bash", "-c", f'ulimit -u {cfg.max_processes} && exec "$@"', "protege-limits", *argv]


def pod_manifest(
    cfg: SandboxConfig, task: TaskInstance, image: str, name: str, role: str | None = None
) -> dict[str, Any]:
    """The pod, as the dict `create_namespaced_pod` takes; `role` (e.g. `grading`) labels a non-agent pod."""
    resources = {"cpu": f"{cfg.cpu_limit:g}", "memory": f"{cfg.memory_limit_mb}Mi"}
    labels = {cfg.pod_label: SANDBOX_LABEL_VALUE} if role is None else {cfg.pod_label: role, ROLE_LABEL: role}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": cfg.namespace,
            "labels": labels,
            "annotations": {INSTANCE_ANNOTATION: task.instance_id},
        },
        "spec": harden(
            cfg,
            {
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "restartPolicy": "Never",
                "activeDeadlineSeconds": cfg.pod_deadline_s,
                "terminationGracePeriodSeconds": 0,
                "containers": [
                    {
                        "name": CONTAINER,
                        "image": image,
                        "command": ["sleep", "infinity"],
                        "workingDir": cfg.workdir,
                        "resources": {"requests": dict(resources), "limits": dict(resources)},
                    }
                ],
            },
        ),
    }


def _delete_pod(core: Any, name: str, namespace: str) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        core.delete_namespaced_pod(name=name, namespace=namespace, grace_period_seconds=0)
    except ApiException as err:
        if err.status != 404:
            log.error("could not delete sandbox pod %s/%s: %s", namespace, name, err)


def _api_reason(err: Any) -> str:
    try:
        return str(json.loads(err.body or "{}").get("reason", ""))
    except (TypeError, ValueError):
        return ""


def _transient(err: Exception) -> bool:
    from kubernetes.client.exceptions import ApiException

    return isinstance(err, ApiException) and transient_status(err.status)


def _default_clients() -> tuple[Any, Any]:
    from kubernetes import client, config
    from kubernetes.stream import stream

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CoreV1Api(), stream


class KubernetesSandbox(ContainerSandbox):
    """One pod per episode (or per graded instance); `core` is a CoreV1Api and `stream` is
    `kubernetes.stream.stream` unless given. `role=None` is an agent's sandbox; a role (`grading`) labels
    the pod with it and leaves the image's history alone (`diff` is then against HEAD)."""

    def __init__(
        self,
        cfg: SandboxConfig,
        task: TaskInstance,
        core: Any = None,
        stream: Any = None,
        *,
        role: str | None = None,
    ) -> None:
        self.cfg, self.task, self.workdir = cfg, task, cfg.workdir
        kind = "sandbox" if role is None else f"{role} pod"
        self.what = f"kubernetes {kind} for {task.instance_id}"
        image = image_for(cfg, task)
        if core is None or stream is None:
            core, stream = _default_clients()
        self._core, self._stream = core, stream
        self.name, self.namespace = sandbox_name(task), cfg.namespace
        manifest = pod_manifest(cfg, task, image, self.name, role)
        self._release = weakref.finalize(self, _delete_pod, core, self.name, self.namespace)
        try:
            with start_slot(cfg.max_concurrent_starts):
                with_backoff(
                    lambda: self._create(manifest), _transient, cfg.start_retries, cfg.start_backoff_s
                )
                self._wait_running()
            self._shell = ContainerShell(cfg, self._exec, self.what)
            self.base_commit = (
                self._shell.clean_history(task.base_commit, task.history) if role is None else "HEAD"
            )
        except BaseException as err:
            self.close()
            if isinstance(err, Exception) and not isinstance(err, SandboxError):
                raise SandboxError(f"{self.what}: could not start pod {self.name}: {err}") from err
            raise

    def _create(self, manifest: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self._core.create_namespaced_pod(namespace=self.namespace, body=manifest)
        except ApiException as err:
            # The name is ours alone (random suffix): AlreadyExists means an earlier attempt got through.
            if err.status == 409 and _api_reason(err) == "AlreadyExists":
                return
            raise

    def _wait_running(self) -> None:
        deadline = time.monotonic() + self.cfg.start_timeout_s
        while True:
            status = self._core.read_namespaced_pod(name=self.name, namespace=self.namespace).status
            if status.phase == "Running":
                return
            if status.phase in ("Failed", "Succeeded"):
                raise SandboxError(
                    f"{self.what}: pod {self.name} ended ({status.phase}) before running: {status.message}"
                )
            for container in status.container_statuses or []:
                waiting = container.state.waiting if container.state else None
                if waiting is not None and waiting.reason in _FATAL_WAITING:
                    raise SandboxError(f"{self.what}: pod {self.name}: {waiting.reason}: {waiting.message}")
            if time.monotonic() >= deadline:
                raise SandboxError(
                    f"{self.what}: pod {self.name} not Running after {self.cfg.start_timeout_s:g}s (phase {status.phase})"
                )
            time.sleep(self.cfg.start_poll_s)

    def _exec(self, argv: list[str], timeout: float, limit: int | None, errors: str) -> CommandResult:
        start, cap = time.monotonic(), OutputCap(limit, errors)
        deadline = start + timeout + self.cfg.exec_grace_s
        ws = self._stream(
            self._core.connect_get_namespaced_pod_exec,
            self.name,
            self.namespace,
            command=limit_processes(self.cfg, argv),
            container=CONTAINER,
            stderr=True,
            stdin=False,
            stdout=True,
            tty=False,
            binary=True,
            _preload_content=False,
        )
        try:
            while ws.is_open():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SandboxError(
                        f"{self.what}: exec in pod {self.name} outlived its {timeout:g}s timeout"
                    )
                ws.update(timeout=remaining)
                # read_all() drains stdout+stderr in order but also forgets the status channel: keep it.
                if not ws.peek_channel(ERROR_CHANNEL):
                    cap.feed(ws.read_all())
            exit_code = ws.returncode
            cap.feed(ws.read_all())
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise SandboxError(f"{self.what}: unreadable exec status from pod {self.name}: {err}") from err
        finally:
            ws.close()
        output, truncated = cap.text()
        return CommandResult(output, exit_code, truncated, False, time.monotonic() - start)
