"""The docker sandbox against a fake docker client at the API boundary (the live daemon: test_docker_live.py).

The fake records every call (container kwargs, exec argv) and runs each exec argv with bash on this
host, with the container's /testbed mapped to a clone of a real repository: the shell snippets
(history cleanup, read, write, diff, timeout) run for real.
"""

from __future__ import annotations

import gc
import itertools
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest
import requests

from protege.agent.protocols import SandboxError
from protege.agent.sandbox.docker import DockerSandbox, container_argv
from protege.config import SandboxConfig
from protege.tasks import TaskInstance
from tests.agent.test_sandbox import GOLD_LINE, git, make_repo, make_task

CHUNK = 1 << 16


def run_mapped(argv: list[str], image_root: Path) -> tuple[bytes, int]:
    """What the container does with an exec argv: bash on this host, the container's workdir at image_root."""
    assert argv[:2] == ["bash", "-c"] and argv[3:5] == ["protege-sandbox", "/testbed"], argv[:5]
    done = subprocess.run(
        [*argv[:4], str(image_root), *argv[5:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    # Like the daemon, report death by signal N as 128 + N (subprocess says -N).
    return done.stdout, done.returncode if done.returncode >= 0 else 128 - done.returncode


def make_image(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A SWE-bench-like image tree: a full clone (origin, later branches and tags) reset back to base."""
    shas = make_repo(tmp_path / "upstream")
    image = tmp_path / "image"
    git(tmp_path, "clone", "-q", str(tmp_path / "upstream"), str(image))
    git(image, "reset", "-q", "--hard", shas["base"])
    git(image, "fetch", "-q", "origin", "refs/stash:refs/stash")
    return image, shas


class FakeContainer:
    def __init__(self, cid: str) -> None:
        self.id = cid
        self.removals: list[dict[str, Any]] = []

    def remove(self, **kwargs: Any) -> None:
        if self.removals:
            raise docker.errors.NotFound("gone")
        self.removals.append(kwargs)


class FakeDocker:
    """The slice of docker.DockerClient the sandbox uses: containers.run and the low-level exec API."""

    def __init__(self, image_root: Path, create_errors: list[Exception] | None = None) -> None:
        self.image_root = image_root
        self.create_errors = list(create_errors or [])
        self.created: list[dict[str, Any]] = []
        self.execs: list[tuple[str, list[str], dict[str, Any]]] = []
        self.exit_codes: dict[str, int] = {}
        self.containers, self.api = self, self
        self.container: FakeContainer | None = None
        self.fail_exec = False
        self._ids = itertools.count()

    def run(self, **kwargs: Any) -> FakeContainer:
        self.created.append(kwargs)
        if self.create_errors:
            raise self.create_errors.pop(0)
        self.container = FakeContainer(f"c{len(self.created)}")
        return self.container

    def exec_create(self, container: str, cmd: list[str], **kwargs: Any) -> dict[str, str]:
        if self.fail_exec:
            raise docker.errors.APIError("container is not running")
        exec_id = f"e{next(self._ids)}"
        self.execs.append((container, cmd, kwargs))
        return {"Id": exec_id}

    def exec_start(self, exec_id: str, stream: bool) -> Iterator[bytes]:
        assert stream is True
        output, self.exit_codes[exec_id] = run_mapped(self.execs[-1][1], self.image_root)
        return (output[i : i + CHUNK] for i in range(0, len(output), CHUNK))

    def exec_inspect(self, exec_id: str) -> dict[str, int]:
        return {"ExitCode": self.exit_codes[exec_id]}


def api_error(status: int) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return docker.errors.APIError(f"status {status}", response=response)


@pytest.fixture(scope="module")
def image_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    return make_image(tmp_path_factory.mktemp("template"))


@pytest.fixture()
def image(image_template, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A fresh copy of the image's file system per test (tests change it)."""
    template, shas = image_template
    shutil.copytree(template, tmp_path / "image", symlinks=True)
    return tmp_path / "image", shas


def with_image(task: TaskInstance) -> TaskInstance:
    return task.model_copy(update={"image": "swebench/sweb.eval.x86_64.owner_1776_calc-1:latest"})


def test_container_has_limits_no_network_and_the_instance_image(image):
    root, shas = image
    client = FakeDocker(root)
    cfg = SandboxConfig(
        backend="docker", memory_limit_mb=2048, cpu_limit=1.5, image_template="registry.local/{image}"
    )
    with DockerSandbox(cfg, with_image(make_task(shas["base"])), client=client):
        pass
    (kwargs,) = client.created
    assert re.fullmatch(r"protege-owner-calc-1-[0-9a-f]{8}", kwargs.pop("name"))
    ((mount,),) = [kwargs.pop("mounts")]
    assert (mount["Target"], mount["Type"], mount.get("Source")) == ("/testbed", "volume", None)
    assert kwargs == {
        "image": "registry.local/swebench/sweb.eval.x86_64.owner_1776_calc-1:latest",
        "command": ["sleep", "infinity"],
        "detach": True,
        "working_dir": "/testbed",
        "network_mode": "none",
        "mem_limit": "2048m",
        "memswap_limit": "2048m",
        "nano_cpus": 1_500_000_000,
        "pids_limit": 512,
        "user": "10001:10001",
        "read_only": True,
        "tmpfs": {"/tmp": "rw,nosuid,nodev,size=512m"},
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "environment": {"HOME": "/tmp"},
        "labels": {"protege.ai/sandbox": "true", "protege.ai/instance-id": "owner__calc-1"},
    }
    assert client.container is not None and client.container.removals == [{"force": True, "v": True}]


def test_start_strips_history_past_base_commit(image):
    root, shas = image
    assert git(root, "cat-file", "-e", f"{shas['fix']}:calc.py") == ""  # the image does hold the fix at first
    sandbox = DockerSandbox(
        SandboxConfig(backend="docker"), with_image(make_task(shas["base"])), client=FakeDocker(root)
    )
    assert sandbox.base_commit == shas["base"]
    assert sandbox.run("git remote").output == ""
    assert sandbox.run("git for-each-ref --format='%(refname)'").output.split() == [
        "refs/heads/main",
        "refs/tags/v0.1",
    ]
    assert sandbox.run("git reflog --all").output == ""
    log_all = sandbox.run("git log --all --format=%H").output.split()
    assert shas["base"] in log_all and shas["fix"] not in log_all and shas["later"] not in log_all
    for later in (shas["fix"], f"{shas['fix']}:calc.py", shas["later"]):
        assert sandbox.run(f"git cat-file -e {later}").exit_code != 0, later
    assert sandbox.run(f"grep -rF '{GOLD_LINE}' .").output == ""
    sandbox.close()


def test_commands_go_through_exec_under_timeout_kill(image):
    root, shas = image
    client, cfg = FakeDocker(root), SandboxConfig(backend="docker")
    with DockerSandbox(cfg, with_image(make_task(shas["base"])), client=client) as sandbox:
        result = sandbox.run("echo hi >&2; exit 3")
        assert (result.output, result.exit_code, result.timed_out) == ("hi\n", 3, False)
        container, argv, kwargs = client.execs[-1]
        assert container == "c1" and kwargs == {"stdout": True, "stderr": True}
        assert argv == container_argv(cfg, "/testbed", 120.0, "echo hi >&2; exit 3", [])
        assert argv[:2] == ["bash", "-c"] and argv[3:] == [
            "protege-sandbox",
            "/testbed",
            "120",
            "echo hi >&2; exit 3",
        ]
        assert 'exec timeout -s KILL "$1" bash -c "$2"' in argv[2] and argv[2].startswith(cfg.shell_init)

        slow = sandbox.run("sleep 5.25 & sleep 5.5", timeout=1)
        assert slow.timed_out and slow.exit_code == 137
        assert sandbox.run("echo next").output == "next\n"


def test_output_cap_file_round_trip_and_diff(image):
    root, shas = image
    cfg = SandboxConfig(backend="docker", output_limit_chars=1000)
    with DockerSandbox(cfg, with_image(make_task(shas["base"])), client=FakeDocker(root)) as sandbox:
        big = sandbox.run("head -c 10000000 /dev/zero | tr '\\0' x")
        assert big.truncated and "[... output truncated: 9999000 of 10000000 bytes cut ...]" in big.output
        content = "".join(f"line {i}\n" for i in range(30_000))  # ~260 KB: several exec chunks
        sandbox.write_file("src/big.txt", content)
        assert sandbox.read_file("src/big.txt") == content
        sandbox.write_file("calc.py", "def add(a, b):\n    return a + b\n")
        patch = sandbox.diff()
        with pytest.raises(FileNotFoundError, match="missing.py"):
            sandbox.read_file("missing.py")
    assert "+    return a + b" in patch and "diff --git a/src/big.txt b/src/big.txt" in patch


def test_editor_file_operations(image):
    root, shas = image
    with DockerSandbox(
        SandboxConfig(backend="docker"), with_image(make_task(shas["base"])), client=FakeDocker(root)
    ) as sandbox:
        assert sandbox.read_path("calc.py") == ("file", "def add(a, b):\n    return a - b\n")
        kind, listing = sandbox.read_path(".")
        assert kind == "dir" and "./calc.py" in listing.split("\n") and "./.git" not in listing
        with pytest.raises(FileExistsError, match="calc.py"):
            sandbox.write_file("calc.py", "x", exclusive=True)
        sandbox.write_file("new.py", "N = 1\n", exclusive=True)
        assert sandbox.edit_file("calc.py", "a - b", "a + b", None) == (
            "def add(a, b):\n    return a - b\n",
            True,
        )
        assert sandbox.edit_file("calc.py", "absent", "x", None)[1] is False
        assert sandbox.read_file("calc.py") == "def add(a, b):\n    return a + b\n"
        assert sandbox.read_file("new.py") == "N = 1\n"


def test_image_not_at_base_commit_is_a_sandbox_error_and_the_container_goes(image):
    root, shas = image
    git(root, "checkout", "-q", shas["fix"])
    client = FakeDocker(root)
    with pytest.raises(
        SandboxError, match=f"owner__calc-1: history cleanup failed.*not base_commit {shas['base']}"
    ):
        DockerSandbox(SandboxConfig(backend="docker"), with_image(make_task(shas["base"])), client=client)
    assert client.container is not None and client.container.removals == [{"force": True, "v": True}]


def test_dropped_sandbox_removes_its_container(image):
    root, shas = image
    client = FakeDocker(root)
    sandbox = DockerSandbox(
        SandboxConfig(backend="docker"), with_image(make_task(shas["base"])), client=client
    )
    del sandbox
    gc.collect()
    assert client.container is not None and client.container.removals == [{"force": True, "v": True}]


def test_throttled_create_is_retried_and_a_bad_request_is_not(image):
    root, shas = image
    cfg = SandboxConfig(backend="docker", start_backoff_s=0, start_retries=3)
    task = with_image(make_task(shas["base"]))
    client = FakeDocker(root, create_errors=[api_error(429), api_error(503)])
    DockerSandbox(cfg, task, client=client).close()
    assert len(client.created) == 3
    refused = FakeDocker(root, create_errors=[api_error(400)])
    with pytest.raises(SandboxError, match="could not start a container from swebench/sweb.eval"):
        DockerSandbox(cfg, task, client=refused)
    assert len(refused.created) == 1


def test_daemon_failure_during_exec_is_a_sandbox_error(image):
    root, shas = image
    client = FakeDocker(root)
    with DockerSandbox(
        SandboxConfig(backend="docker"), with_image(make_task(shas["base"])), client=client
    ) as sandbox:
        client.fail_exec = True
        with pytest.raises(SandboxError, match="owner__calc-1: exec failed: container is not running"):
            sandbox.run("true")
