"""Kubernetes grading at the API boundary: a fake CoreV1Api whose "pods" are bubblewrap sandboxes with a
real git repository at /testbed, and a fake `stream` that runs each exec there. Everything above the
client (pod manifest, exec protocol, the swebench apply sequence, the eval script, grading, pod cleanup,
the pod cap) runs for real."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from protege.config import ProtegeConfig
from protege.grading import GradeJob, grade_batch
from protege.tasks import TaskInstance
from tests.agent.test_sandbox_k8s import ws_for

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")

GOLD = "diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n"
TEST_PATCH = (
    "diff --git a/test_calc.py b/test_calc.py\n--- a/test_calc.py\n+++ b/test_calc.py\n"
    "@@ -3,0 +4,3 @@ def test_old():\n+\n+def test_new():\n+    assert x == 2\n"
)
EVAL = f"""#!/bin/bash
set -uxo pipefail
cd /testbed
git apply -v - <<'EOF_114329324912'
{TEST_PATCH.rstrip()}
EOF_114329324912
: '>>>>> Start Test Output'
{sys.executable} -m pytest -p no:cacheprovider -rA test_calc.py
: '>>>>> End Test Output'
git checkout HEAD -- test_calc.py
"""


def task(n: int) -> TaskInstance:
    return TaskInstance(
        instance_id=f"acme__calc-{n}",
        repo="acme/calc",
        base_commit="0" * 40,
        problem_statement="x must be 2",
        patch=GOLD,
        test_patch=TEST_PATCH,
        FAIL_TO_PASS=["test_calc.py::test_new"],
        PASS_TO_PASS=["test_calc.py::test_old"],
        image="registry/acme-calc:1",
        eval_script=EVAL,
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("calc")
    (root / "calc.py").write_text("x = 1\n")
    (root / "test_calc.py").write_text("from calc import x\n\ndef test_old():\n    assert x in (1, 2)\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "base"], cwd=root, check=True)
    return root


class FakeCore:
    """CoreV1Api's pod calls; each pod is a copy of the repository."""

    def __init__(self, repo: Path, scratch: Path):
        self.repo, self.scratch = repo, scratch
        self.pods: dict[str, Path] = {}
        self.manifests: list[dict] = []
        self.deleted: list[str] = []
        self.max_alive = 0
        self.lock = threading.Lock()

    def create_namespaced_pod(self, namespace, body):
        name = body["metadata"]["name"]
        shutil.copytree(self.repo, self.scratch / name)
        with self.lock:
            self.manifests.append(body)
            self.pods[name] = self.scratch / name
            self.max_alive = max(self.max_alive, len(self.pods))

    def read_namespaced_pod(self, name, namespace):
        return SimpleNamespace(status=SimpleNamespace(phase="Running"))

    def connect_get_namespaced_pod_exec(self, *args, **kwargs):
        raise AssertionError("only ever passed to stream()")

    def delete_namespaced_pod(self, name, namespace, grace_period_seconds=None):
        with self.lock:
            self.deleted.append(name)
            self.pods.pop(name)


def pod_filesystem(root: Path) -> list[str]:
    """bwrap arguments for a container-like view: system and Python dirs read-only, the repo at /testbed."""
    # /tmp first: the Python binds below may live under /tmp (a checkout there) and must stay visible.
    args = ["bwrap", "--unshare-all", "--die-with-parent", "--tmpfs", "/tmp"]
    for path in ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc"):
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in {
        os.path.realpath(p)
        for p in (sys.prefix, sys.base_prefix, Path(os.path.realpath(sys.executable)).parent.parent)
    }:
        args += ["--ro-bind", path, path]
    return [
        *args,
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--bind",
        str(root),
        "/testbed",
        "--chdir",
        "/testbed",
    ]


def fake_stream(core: FakeCore):
    """Runs each exec's argv in the pod's bubblewrap and answers with the kubernetes client's own WSClient."""

    def stream(fn, name, namespace, command, **kwargs):
        assert fn == core.connect_get_namespaced_pod_exec and kwargs["tty"] is False
        proc = subprocess.run([*pod_filesystem(core.pods[name]), "--", *command], capture_output=True)
        return ws_for(proc.stdout + proc.stderr, proc.returncode)

    return stream


def test_one_pod_per_instance_graded_over_exec_and_cleaned_up(repo, tmp_path):
    from protege.grading.kubernetes import pod_opener

    cfg = ProtegeConfig.model_validate(
        {
            "agent": {"sandbox": {"backend": "kubernetes", "namespace": "grading-ns"}},
            "eval": {"grade_max_pods": 2},
        }
    )
    core = FakeCore(repo, tmp_path / "pods")
    (tmp_path / "pods").mkdir()
    bad = GOLD.replace("-x = 1", "-x = 7")
    jobs = [
        GradeJob(task(1), GOLD),
        GradeJob(task(2), ""),
        GradeJob(task(3), bad),
        GradeJob(task(4), "", run_tests_on_empty=True),
    ]
    results = grade_batch(
        jobs,
        cfg,
        tmp_path / "unused",
        workers=4,
        logs_dir=tmp_path / "logs",
        open_sandbox=pod_opener(cfg, core, fake_stream(core)),
    )

    assert [r.failure_reason for r in results] == ["none", "empty_patch", "patch_apply_failed", "empty_patch"]
    assert results[0].resolved and results[0].tests_status["FAIL_TO_PASS"]["success"] == [
        "test_calc.py::test_new"
    ]
    assert results[3].tests_status["FAIL_TO_PASS"]["failure"] == ["test_calc.py::test_new"]
    assert results[3].tests_status["PASS_TO_PASS"]["success"] == ["test_calc.py::test_old"]
    # the empty patch without tests never starts a pod; every started pod is deleted; never more than the cap
    assert len(core.manifests) == 3 and sorted(core.deleted) == sorted(
        m["metadata"]["name"] for m in core.manifests
    )
    assert core.max_alive <= 2
    spec = core.manifests[0]
    assert spec["metadata"]["namespace"] == "grading-ns"
    assert spec["spec"]["containers"][0]["image"] == "registry/acme-calc:1"
    assert spec["spec"]["automountServiceAccountToken"] is False
    assert cfg.agent.sandbox.pod_label in spec["metadata"]["labels"]


def test_grading_pod_has_the_sandbox_pods_security_settings():
    """Non-root, no escalation, no capabilities, seccomp RuntimeDefault, read-only root with writable
    emptyDir copies, memory/ephemeral-storage limits, and every exec under `ulimit -u`."""
    from protege.grading.kubernetes import open_pod_sandbox

    cfg = ProtegeConfig.model_validate(
        {
            "agent": {
                "sandbox": {
                    "backend": "kubernetes",
                    "max_processes": 99,
                    "disk_limit_mb": 512,
                    "pod_writable_paths": ["/tmp", "/opt/env"],
                }
            }
        }
    )
    created, calls = [], []
    core = SimpleNamespace(
        create_namespaced_pod=lambda namespace, body: created.append(body),
        read_namespaced_pod=lambda name, namespace: SimpleNamespace(status=SimpleNamespace(phase="Running")),
        delete_namespaced_pod=lambda name, namespace, grace_period_seconds: None,
        connect_get_namespaced_pod_exec=None,
    )

    def stream(fn, name, namespace, command, **kwargs):
        calls.append(command)
        return ws_for(b"", 0)

    with open_pod_sandbox(cfg, task(1), core, stream) as sandbox:
        sandbox.run("true")
    spec = created[0]["spec"]
    # the grading NetworkPolicy (manifests/base/networkpolicy.yaml) selects this label value
    assert created[0]["metadata"]["labels"] == {
        cfg.agent.sandbox.pod_label: "grading",
        "protege.ai/role": "grading",
    }
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (container,) = spec["containers"]
    (init,) = spec["initContainers"]
    locked = {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["securityContext"] == init["securityContext"] == locked
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/testbed", "/tmp", "/opt/env"]
    assert all(v["emptyDir"] == {"sizeLimit": "512Mi"} for v in spec["volumes"])
    assert "cp -a /opt/env/. /protege-writable/2/" in init["command"][2]
    assert container["resources"]["limits"]["ephemeral-storage"] == "512Mi"
    assert container["resources"]["limits"]["memory"] == f"{cfg.agent.sandbox.memory_limit_mb}Mi"

    assert calls[0][:4] == ["bash", "-c", 'ulimit -u 99 && exec "$@"', "protege-limits"]
