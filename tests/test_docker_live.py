"""The container path against a real Docker daemon (the `docker` tier; `make test` starts one as root).

An agent episode in the Docker sandbox, escape attempts from it, Docker grading (fresh per attempt) and
`verify` on the demo set with the same verdicts as the local backend, and the agent image running
`protege tasks verify` end to end on tasks read from the local S3 server. Without a daemon every test here
is skipped with the reason (see the `docker_engine` fixture and the report header).
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from protege.agent.agent import Agent
from protege.agent.policies import ScriptedPolicy
from protege.agent.sandbox.docker import DockerSandbox
from protege.config import AgentConfig, ProtegeConfig, SandboxConfig
from protege.demo import demo_tasks
from protege.grading import grade
from protege.tasks import TaskInstance
from protege.verify import verify_task_set

pytestmark = pytest.mark.docker

CANARY = "PROTEGE_HOST_CANARY"
MEMORY_MB = 256
PIDS = 64


def docker_sandbox_cfg(**extra: object) -> SandboxConfig:
    return SandboxConfig(
        backend="docker", command_timeout_s=60, memory_limit_mb=MEMORY_MB, max_processes=PIDS, **extra
    )


def demo_task(name: str = "csvcols") -> TaskInstance:
    return next(t for t in demo_tasks("all") if t.repo == f"protege-demo/{name}")


@pytest.fixture
def sandbox(docker_engine: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[DockerSandbox]:
    monkeypatch.setenv(CANARY, "host-secret-7d1e")  # must not reach the container
    box = DockerSandbox(docker_sandbox_cfg(), demo_task())
    try:
        yield box
    finally:
        box.close()


def test_a_scripted_episode_runs_in_a_hardened_container_and_its_patch_resolves(sandbox, tmp_path):
    import docker

    task = demo_task()
    attrs = docker.from_env().containers.get(sandbox._container.id).attrs
    host = attrs["HostConfig"]
    assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] is True
    assert host["Memory"] == MEMORY_MB * 2**20 and host["MemorySwap"] == MEMORY_MB * 2**20
    assert host["PidsLimit"] == PIDS and host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"] and attrs["Config"]["User"] == "10001:10001"
    turns = [
        {"tool": "bash", "arguments": {"command": 'echo "uid=$(id -u) dirty=$(git status --short | wc -l)"'}},
        {
            "tool": "bash",
            "arguments": {
                "command": f"cat > /tmp/fix.diff <<'EOF_FIX'\n{task.patch}EOF_FIX\ngit apply /tmp/fix.diff"
            },
        },
        {"tool": "submit", "arguments": {}},
    ]
    trajectory = Agent(AgentConfig(step_limit=10), ScriptedPolicy(turns), sandbox, task).run()
    assert trajectory.status == "submitted", trajectory.status_detail
    first_observation = next(m.content for m in trajectory.messages if m.provenance == "tool")
    assert "uid=10001 dirty=0" in first_observation
    assert trajectory.patch.strip() == task.patch.strip()
    cfg = ProtegeConfig.model_validate({"agent": {"sandbox": {"backend": "docker"}}})
    result = grade(task, trajectory.patch, cfg, tmp_path, logs_dir=tmp_path / "logs")
    assert result.resolved and result.failure_reason == "none"


# --------------------------------------------------------------------------------------------------
# Escape attempts (each must be blocked)
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A TCP listener on the host's loopback; a connection from the sandbox would be accepted."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted: list[object] = []

    def serve() -> None:
        try:
            accepted.append(server.accept())
        except OSError:
            return

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()
    assert not accepted, "the sandbox reached the host's loopback"


def test_no_network(sandbox, host_listener):
    probe = (
        "import socket,sys\n"
        f"for host, port in [('127.0.0.1', {host_listener}), ('1.1.1.1', 53), ('deb.debian.org', 80)]:\n"
        "    try:\n"
        "        socket.create_connection((host, port), timeout=3); print('CONNECTED', host)\n"
        "    except OSError as e: print('blocked', host, type(e).__name__)\n"
    )
    result = sandbox.run(f"python3 -c {quote(probe)}; ls /sys/class/net")
    assert "CONNECTED" not in result.output and result.output.count("blocked") == 3, result.output
    assert result.output.split()[-1] == "lo"  # no interface but loopback


def test_no_write_outside_the_work_tree(sandbox):
    for path in ("/etc/passwd-x", "/usr/bin/x", "/x", "/home/x", "/opt/testbed-env/x", "/var/x"):
        result = sandbox.run(f"touch {path} && echo WROTE")
        assert "WROTE" not in result.output and "Read-only file system" in result.output, (
            path,
            result.output,
        )
    assert sandbox.run("touch /testbed/new.txt && echo WROTE").output.strip() == "WROTE"
    # the host's files are not there at all: neither this checkout nor the daemon's socket
    result = sandbox.run(f"ls {Path(__file__).parent} /var/run/docker.sock 2>&1; echo done")
    assert "No such file or directory" in result.output and "test_docker_live.py" not in result.output


def test_no_host_environment_and_no_privileges(sandbox):
    result = sandbox.run("env; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status")
    assert CANARY not in result.output and "ANTHROPIC_API_KEY" not in result.output
    assert "AWS_" not in result.output and "DOCKER_HOST" not in result.output
    assert "CapEff:\t0000000000000000" in result.output
    assert "NoNewPrivs:\t1" in result.output and "Seccomp:\t2" in result.output  # 2: a filter (the default)
    result = sandbox.run("mount -t tmpfs none /testbed/.git 2>&1 || echo DENIED; id -u")
    assert "DENIED" in result.output and result.output.split()[-1] == "10001"


def test_pid_limit_holds(sandbox):
    forker = (
        "import os, time\n"
        "kids = []\n"
        "try:\n"
        "    for _ in range(400):\n"
        "        pid = os.fork()\n"
        "        if pid == 0:\n"
        "            time.sleep(20); os._exit(0)\n"
        "        kids.append(pid)\n"
        "except OSError as e:\n"
        "    print('blocked after', len(kids))\n"
        "for pid in kids: os.kill(pid, 9)\n"
    )
    result = sandbox.run(f"python3 -c {quote(forker)}")
    assert "blocked after" in result.output, result.output
    assert int(result.output.split()[-1]) < PIDS


def test_memory_limit_holds(sandbox):
    # three processes of 150 MB each: the limit covers the whole container, not each process
    hog = "import time; b = bytearray(150 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(5)"
    result = sandbox.run(f"for i in 1 2 3; do (python3 -c {quote(hog)}; echo rc=$?) & done; wait")
    codes = sorted(line for line in result.output.split() if line.startswith("rc="))
    assert len(codes) == 3 and "rc=137" in codes, result.output  # the cgroup limit killed at least one
    alone = sandbox.run(f"python3 -c {quote(hog.replace('150', '400'))}; echo rc=$?")
    assert "rc=137" in alone.output, alone.output  # one process over the limit is killed


def quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


# --------------------------------------------------------------------------------------------------
# Docker grading and verify
# --------------------------------------------------------------------------------------------------


def test_a_later_grading_attempt_is_not_the_first_attempts_cached_report(docker_engine, tmp_path):
    task = demo_task("daterange")
    cfg = ProtegeConfig.model_validate({"agent": {"sandbox": {"backend": "docker"}}})
    # a patch no GIT_APPLY_CMDS command applies, graded after the gold one under the same run and label:
    # the harness would return the gold attempt's cached report if the folder were shared
    wrong = "diff --git a/README.md b/README.md\n--- a/README.md\n+++ b/README.md\n@@ -1 +1,2 @@\n"
    logs = tmp_path / "logs"
    _, volumes_before = leftovers()
    empty_run = grade(task, "", cfg, tmp_path, logs_dir=logs, run_tests_on_empty=True)
    gold = grade(task, task.patch, cfg, tmp_path, logs_dir=logs)
    again = grade(task, task.patch, cfg, tmp_path, logs_dir=logs)
    assert not empty_run.resolved and gold.resolved and again.resolved
    broken = grade(task, wrong + "+x\n", cfg, tmp_path, logs_dir=logs)
    assert not broken.resolved and broken.failure_reason == "patch_apply_failed"
    attempts = sorted(p.name for p in (logs / "grade" / "docker" / "grade.model").iterdir())
    assert attempts == ["attempt-1", "attempt-2", "attempt-3"]
    assert leftovers() == ([], volumes_before)  # every container went, with its workdir volume


def leftovers() -> tuple[list[str], int]:
    """Grading containers still on the daemon, and the number of dangling volumes."""
    import docker

    client = docker.from_env()
    names = [c.name for c in client.containers.list(all=True, filters={"name": "sweb.eval"})]
    return names, len(client.volumes.list(filters={"dangling": True}))


def outcome(result) -> tuple:
    return (result.resolved, result.failure_reason, result.patch_successfully_applied, result.tests_status)


@pytest.mark.slow
def test_docker_and_local_backends_give_identical_verdicts_on_the_demo_set(docker_engine, tmp_path):
    from protege.tasksets import ensure_local_repos

    tasks = demo_tasks("all")
    assert len(tasks) == 12
    reports = {}
    for backend in ("local", "docker"):
        cfg = ProtegeConfig.model_validate({"agent": {"sandbox": {"backend": backend}}})
        repos = tmp_path / "repos"
        if backend == "local":
            ensure_local_repos(tasks, "demo:all", repos)
        reports[backend] = verify_task_set(tasks, cfg, repos, workers=4, logs_dir=tmp_path / backend)
    local, docker_ = reports["local"], reports["docker"]
    assert local.ok and docker_.ok
    for a, b in zip(local.verdicts, docker_.verdicts, strict=True):
        assert a.instance_id == b.instance_id
        assert outcome(a.gold) == outcome(b.gold), a.instance_id
        assert outcome(a.empty) == outcome(b.empty), a.instance_id


# --------------------------------------------------------------------------------------------------
# A component in its image
# --------------------------------------------------------------------------------------------------


def agent_image() -> str | None:
    """The agent image of this commit if built, else the newest agent image (`make images` builds them)."""
    import docker

    from protege.docker_engine import git_sha
    from protege.image_refs import image_ref

    client = docker.from_env()
    wanted = image_ref("agent", git_sha())
    images = client.images.list(name=wanted.rsplit(":", 1)[0])
    for image in images:
        if wanted in image.tags:
            return wanted
    images.sort(key=lambda image: image.attrs["Created"], reverse=True)
    return images[0].tags[0] if images else None


@pytest.mark.slow
def test_the_agent_image_verifies_the_demo_set_from_s3(docker_engine, store, s3_server):
    image = agent_image()
    if image is None:
        pytest.skip("docker tier: no agent image built here; `make images` builds it")
    import protege.demo

    source = store.upload_file(
        Path(protege.demo.__file__).parent / "tasks.jsonl", f"s3://{store._cfg.bucket}/tasks/demo.jsonl"
    )
    socket_path = docker_engine.removeprefix("unix://")
    cfg = s3_server.store_config()
    # --network host: the task set is on the host's loopback s3rver. The grading containers are siblings on
    # the same daemon (its socket mounted; the image's user joins the socket's group).
    argv = [
        "docker",
        "run",
        "--rm",
        "--network",
        "host",
        "-v",
        f"{socket_path}:/var/run/docker.sock",
        "--group-add",
        str(os.stat(socket_path).st_gid),
        "-e",
        f"PROTEGE_S3_ENDPOINT={cfg.endpoint}",
        "-e",
        f"AWS_ACCESS_KEY_ID={cfg.access_key.get_secret_value()}",
        "-e",
        f"AWS_SECRET_ACCESS_KEY={cfg.secret_key.get_secret_value()}",
        image,
        "protege",
        "tasks",
        "verify",
        "--backend",
        "docker",
        "--workers",
        "4",
        source,
        "eval.grade_logs_dir=/tmp/grades",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "12/12 instance(s) ok" in done.stdout
    assert leftovers()[0] == []  # the component removed its grading containers (no docker CLI in the image)
