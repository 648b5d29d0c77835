"""The kubernetes sandbox at the API boundary (no cluster exists here).

A fake CoreV1Api records pod creation, status reads and deletion; the fake `stream` function answers
each exec with the kubernetes client's own `WSClient` fed frames through a socket pair, after running
the exec argv with bash on this host against a clone of a real repository (see test_sandbox_docker).
"""

from __future__ import annotations

import gc
import json
import re
import shutil
import socket
import threading
import time
from collections import deque
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client import V1ContainerState, V1ContainerStateWaiting, V1ContainerStatus, V1Pod, V1PodStatus
from kubernetes.client.exceptions import ApiException
from kubernetes.stream.ws_client import ABNF, WSClient

from protege.agent.protocols import SandboxError
from protege.agent.sandbox.docker import container_argv
from protege.agent.sandbox.kubernetes import KubernetesSandbox, limit_processes, pod_manifest
from protege.config import SandboxConfig
from protege.tasks import TaskInstance
from tests.agent.test_sandbox import make_task
from tests.agent.test_sandbox_docker import CHUNK, make_image, run_mapped

IMAGE = "swebench/sweb.eval.x86_64.owner_1776_calc-1:latest"


class FrameSocket:
    """Stands in for the websocket under WSClient: queued frames, a real fd so poll() works."""

    def __init__(self, frames: list[tuple[int, bytes]]) -> None:
        self.sock, self._peer = socket.socketpair()
        self.frames = deque(frames)
        self.connected = True
        self._peer.sendall(b"x" * len(frames))

    def recv_data_frame(self, control: bool) -> tuple[int, SimpleNamespace]:
        self.sock.recv(1)
        opcode, data = self.frames.popleft()
        return opcode, SimpleNamespace(data=data)

    def close(self, **kwargs: Any) -> None:
        self.connected = False
        self.sock.close()
        self._peer.close()


def ws_for(output: bytes, exit_code: int) -> WSClient:
    """The client's WSClient as it would be after connecting to an exec that prints output and exits."""
    status = (
        {"status": "Success"}
        if exit_code == 0
        else {
            "status": "Failure",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]},
        }
    )
    frames = [(ABNF.OPCODE_BINARY, b"\x01" + output[i : i + CHUNK]) for i in range(0, len(output), CHUNK)]
    frames += [(ABNF.OPCODE_BINARY, b"\x03" + json.dumps(status).encode()), (ABNF.OPCODE_CLOSE, b"")]
    ws = WSClient.__new__(WSClient)  # its __init__ would dial the API server
    ws._connected, ws._channels, ws.binary, ws.newline = True, {}, True, b"\n"
    ws._all, ws._returncode, ws.sock = BytesIO(), None, FrameSocket(frames)
    return ws


def pod(phase: str, waiting: str = "") -> V1Pod:
    statuses = None
    if waiting:
        state = V1ContainerState(waiting=V1ContainerStateWaiting(reason=waiting, message="no such image"))
        statuses = [
            V1ContainerStatus(
                name="sandbox", image=IMAGE, image_id="", ready=False, restart_count=0, state=state
            )
        ]
    return V1Pod(status=V1PodStatus(phase=phase, container_statuses=statuses))


class FakeCore:
    """The CoreV1Api calls the sandbox makes."""

    def __init__(
        self,
        image_root: Path,
        phases: list[V1Pod] | None = None,
        create_errors: list[ApiException] | None = None,
    ):
        self.image_root = image_root
        self.roots: dict[str, Path] = {}
        self.phases = deque(phases or [pod("Pending"), pod("Running")])
        self.create_errors = list(create_errors or [])
        self.created: list[dict[str, Any]] = []
        self.deleted: list[dict[str, Any]] = []
        self.execs: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.gate: threading.Event | None = None
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()

    def create_namespaced_pod(self, namespace: str, body: dict[str, Any]) -> None:
        self.created.append(body)
        error = self.create_errors.pop(0) if self.create_errors else None
        if error is not None and error.status < 500:
            raise error
        name = body["metadata"]["name"]
        if name not in self.roots:  # each pod gets its own copy of the image's file system
            self.roots[name] = self.image_root.parent / "pods" / name
            shutil.copytree(self.image_root, self.roots[name], symlinks=True)
        if error is not None:
            raise error  # a 5xx whose pod was created all the same (the reply got lost)
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if self.gate is not None:
            self.gate.wait()

    def read_namespaced_pod(self, name: str, namespace: str) -> V1Pod:
        current = self.phases[0] if len(self.phases) == 1 else self.phases.popleft()
        if current.status.phase == "Running":
            with self.lock:
                self.in_flight -= 1
        return current

    def delete_namespaced_pod(self, name: str, namespace: str, grace_period_seconds: int) -> None:
        gone = any(d["name"] == name for d in self.deleted)
        self.deleted.append(
            {"name": name, "namespace": namespace, "grace_period_seconds": grace_period_seconds}
        )
        if gone:
            raise ApiException(status=404, reason="Not Found")

    def connect_get_namespaced_pod_exec(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("only ever called through kubernetes.stream.stream")

    def stream(self, func: Any, *args: Any, **kwargs: Any) -> WSClient:
        assert func == self.connect_get_namespaced_pod_exec
        self.execs.append((args, kwargs))
        limits, argv = kwargs["command"][:4], kwargs["command"][4:]
        assert limits == limit_processes(k8s_cfg(), [])  # every exec runs under `ulimit -u`
        return ws_for(*run_mapped(argv, self.roots[args[0]]))


def conflict(reason: str) -> ApiException:
    err = ApiException(status=409, reason="Conflict")
    err.body = json.dumps({"kind": "Status", "reason": reason})
    return err


def k8s_cfg(**over: Any) -> SandboxConfig:
    return SandboxConfig(backend="kubernetes", start_poll_s=0.01, start_backoff_s=0, **over)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TaskInstance, dict[str, str]]:
    """The image's file system; every pod works on its own copy of it."""
    root, shas = make_image(tmp_path_factory.mktemp("template"))
    return root, make_task(shas["base"]).model_copy(update={"image": IMAGE}), shas


def open_pod(core: FakeCore, task: TaskInstance, **over: Any) -> KubernetesSandbox:
    return KubernetesSandbox(k8s_cfg(**over), task, core=core, stream=core.stream)


# The hardened part of every sandbox and grading pod (sandbox_k8s.harden), at the defaults.
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "fsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "privileged": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
WRITABLE_VOLUMES = [
    {"name": "writable-0", "emptyDir": {"sizeLimit": "2048Mi"}},
    {"name": "writable-1", "emptyDir": {"sizeLimit": "2048Mi"}},
]
COPY_WRITABLE = (
    "if [ -d /testbed ]; then cp -a /testbed/. /protege-writable/0/; fi && "
    "if [ -d /tmp ]; then cp -a /tmp/. /protege-writable/1/; fi"
)
RESOURCES = {
    "requests": {"cpu": "2", "memory": "3072Mi", "ephemeral-storage": "2048Mi"},
    "limits": {"cpu": "2", "memory": "3072Mi", "ephemeral-storage": "2048Mi"},
}


def test_pod_spec_is_exact(image):
    _, task, _ = image
    cfg = k8s_cfg(namespace="sbx", cpu_limit=2, memory_limit_mb=3072, pod_deadline_s=5400)
    assert pod_manifest(cfg, task, "reg/" + IMAGE, "protege-owner-calc-1-0a1b2c3d") == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "protege-owner-calc-1-0a1b2c3d",
            "namespace": "sbx",
            "labels": {"protege.ai/sandbox": "true"},
            "annotations": {"protege.ai/instance-id": "owner__calc-1"},
        },
        "spec": {
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "restartPolicy": "Never",
            "activeDeadlineSeconds": 5400,
            "terminationGracePeriodSeconds": 0,
            "securityContext": POD_SECURITY,
            "volumes": WRITABLE_VOLUMES,
            "initContainers": [
                {
                    "name": "copy-writable",
                    "image": "reg/" + IMAGE,
                    "command": ["/bin/sh", "-c", COPY_WRITABLE],
                    "resources": RESOURCES,
                    "securityContext": CONTAINER_SECURITY,
                    "volumeMounts": [
                        {"name": "writable-0", "mountPath": "/protege-writable/0"},
                        {"name": "writable-1", "mountPath": "/protege-writable/1"},
                    ],
                }
            ],
            "containers": [
                {
                    "name": "sandbox",
                    "image": "reg/" + IMAGE,
                    "command": ["sleep", "infinity"],
                    "workingDir": "/testbed",
                    "resources": RESOURCES,
                    "securityContext": CONTAINER_SECURITY,
                    "volumeMounts": [
                        {"name": "writable-0", "mountPath": "/testbed"},
                        {"name": "writable-1", "mountPath": "/tmp"},
                    ],
                    "env": [{"name": "HOME", "value": "/tmp"}],
                }
            ],
        },
    }


def test_episode_creates_waits_execs_and_deletes(image):
    root, task, shas = image
    core = FakeCore(root)
    with open_pod(core, task) as sandbox:
        assert re.fullmatch(r"protege-owner-calc-1-[0-9a-f]{8}", sandbox.name)
        assert core.created == [pod_manifest(k8s_cfg(), task, IMAGE, sandbox.name)]
        assert sandbox.base_commit == shas["base"]
        assert sandbox.run("git for-each-ref --format='%(refname)'").output.split() == [
            "refs/heads/main",
            "refs/tags/v0.1",
        ]
        result = sandbox.run("echo out; echo err >&2; exit 4")
        assert (result.output, result.exit_code, result.timed_out) == ("out\nerr\n", 4, False)
        args, kwargs = core.execs[-1]
        assert args == (sandbox.name, "protege-sandboxes")
        assert kwargs == {
            "command": limit_processes(
                k8s_cfg(), container_argv(k8s_cfg(), "/testbed", 120.0, "echo out; echo err >&2; exit 4", [])
            ),
            "container": "sandbox",
            "stderr": True,
            "stdin": False,
            "stdout": True,
            "tty": False,
            "binary": True,
            "_preload_content": False,
        }
        assert sandbox.run("sleep 5.5", timeout=1).timed_out
        big = sandbox.run("head -c 10000000 /dev/zero | tr '\\0' y")
        assert big.truncated and big.output.startswith("y" * 50_000) and len(big.output) < 100_100
        sandbox.write_file("new.py", "X = 1\n")
        assert sandbox.read_file("new.py") == "X = 1\n"
        assert "+X = 1" in sandbox.diff()
        assert core.deleted == []
    assert core.deleted == [
        {"name": sandbox.name, "namespace": "protege-sandboxes", "grace_period_seconds": 0}
    ]
    sandbox.close()  # a second close is a no-op


@pytest.mark.parametrize(
    ("phases", "message"),
    [
        ([pod("Pending"), pod("Failed")], "ended \\(Failed\\) before running"),
        ([pod("Pending", waiting="ErrImagePull")], "ErrImagePull: no such image"),
        ([pod("Pending")], "not Running after 0.05s \\(phase Pending\\)"),
    ],
)
def test_a_pod_that_never_runs_is_deleted_and_reported(image, phases, message):
    root, task, _ = image
    core = FakeCore(root, phases=phases)
    with pytest.raises(
        SandboxError, match=f"kubernetes sandbox for owner__calc-1: pod protege-owner-calc-1-.*{message}"
    ):
        open_pod(core, task, start_timeout_s=0.05)
    assert len(core.deleted) == 1 and core.deleted[0]["name"] == core.created[0]["metadata"]["name"]


def test_failed_history_cleanup_deletes_the_pod(image):
    root, task, _ = image
    core = FakeCore(root)
    with pytest.raises(SandboxError, match="history cleanup failed"):
        open_pod(core, task.model_copy(update={"base_commit": "deadbeefdeadbeef"}))
    assert len(core.deleted) == 1


def test_dropped_sandbox_deletes_its_pod(image):
    root, task, _ = image
    core = FakeCore(root)
    sandbox = open_pod(core, task)
    name = sandbox.name
    del sandbox
    gc.collect()
    assert core.deleted == [{"name": name, "namespace": "protege-sandboxes", "grace_period_seconds": 0}]


def test_creation_backs_off_on_throttling_and_adopts_its_own_pod(image):
    root, task, _ = image
    core = FakeCore(
        root, create_errors=[ApiException(status=429), ApiException(status=500), conflict("AlreadyExists")]
    )
    open_pod(core, task, start_retries=3).close()
    assert len(core.created) == 3 and len({body["metadata"]["name"] for body in core.created}) == 1

    forbidden = FakeCore(root, create_errors=[ApiException(status=403, reason="Forbidden")])
    with pytest.raises(SandboxError, match=r"(?s)could not start pod .*\(403\).*Forbidden"):
        open_pod(forbidden, task)
    assert len(forbidden.created) == 1 and len(forbidden.deleted) == 1

    busy = FakeCore(root, create_errors=[ApiException(status=503)] * 3)
    with pytest.raises(SandboxError, match="could not start pod"):
        open_pod(busy, task, start_retries=2)
    assert len(busy.created) == 3


def test_pod_starts_are_capped_process_wide(image):
    root, task, _ = image
    core = FakeCore(root, phases=[pod("Running")])
    core.gate = threading.Event()
    sandboxes: list[KubernetesSandbox] = []
    threads = [
        threading.Thread(target=lambda: sandboxes.append(open_pod(core, task, max_concurrent_starts=2)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    while len(core.created) < 2:
        time.sleep(0.01)
    time.sleep(0.3)  # time for a third start to slip past the cap, if the cap did not hold
    assert len(core.created) == 2
    core.gate.set()
    for thread in threads:
        thread.join()
    assert len(sandboxes) == 4 and len(core.created) == 4 and core.max_in_flight == 2
    for sandbox in sandboxes:
        sandbox.close()
    assert len(core.deleted) == 4
