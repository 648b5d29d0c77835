"""Docker images of per-task environments, layered as swebench layers its own:

- an **environment image** per `EnvironmentSpec.env_digest()`: the base image (`protege/base:bookworm-minbase`
  here, `python:3.11-slim-bookworm` on a daemon that can pull) plus a venv at /opt/testbed-env holding the
  spec's packages, first on PATH; built once with `--network host` and the host CA bundle (the package index
  is reached through the host's proxy);
- an **instance image** per task: the environment image plus the repository at base_commit in /testbed, the
  spec's pre-install and install lines (and for `install_repo` an editable install into the venv, offline)
  run at build time as swebench's instance images do, owned by the sandbox user. Its `protege.spec` label
  carries the spec's digest, so an image built for another spec or base is rebuilt.

The base image's Python must be the spec's `python`: any other is an `UnavailablePython` naming the
environment (the base has one interpreter, and nothing is downloaded silently). On clusters, rows that carry
a prebuilt `image` use it and nothing is built.
"""

from __future__ import annotations

import shlex
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from protege.docker_engine import SANDBOX_UID, EngineError, _copy_ca, _docker, _image_exists, _label
from protege.environments import EXCLUDE_NEW_FILES, EnvironmentSpec, UnavailablePython
from protege.tasks import spec_digest

ENV_PREFIX = "/opt/testbed-env"
ENV_DOCKERFILE = f"""\
ARG BASE_IMAGE
FROM ${{BASE_IMAGE}}
COPY build-ca.crt requirements.txt /tmp/
RUN (command -v git >/dev/null || (apt-get update -q && apt-get install -y -q --no-install-recommends git)) \\
 && python3 -m venv {ENV_PREFIX} \\
 && PIP_CERT=/tmp/build-ca.crt {ENV_PREFIX}/bin/pip install -q --no-cache-dir -r /tmp/requirements.txt \\
 && rm /tmp/build-ca.crt /tmp/requirements.txt \\
 && (getent group protege || groupadd --gid {SANDBOX_UID} protege) \\
 && (id -u protege || useradd --create-home --uid {SANDBOX_UID} --gid {SANDBOX_UID} protege)
ENV PATH={ENV_PREFIX}/bin:$PATH VIRTUAL_ENV={ENV_PREFIX}
"""
INSTANCE_DOCKERFILE = f"""\
ARG ENV_IMAGE
FROM ${{ENV_IMAGE}}
COPY testbed /testbed
COPY setup.sh /tmp/setup.sh
WORKDIR /testbed
RUN git config --system --add safe.directory /testbed && /bin/bash /tmp/setup.sh && rm /tmp/setup.sh \\
 && chown -R {SANDBOX_UID}:{SANDBOX_UID} /testbed
USER {SANDBOX_UID}:{SANDBOX_UID}
"""
_base_pythons: dict[str, str] = {}


def base_python(base: str) -> str:
    """`major.minor` of the base image's python3 (asked once per process)."""
    if base not in _base_pythons:
        probe = "import sys; print('%d.%d' % sys.version_info[:2])"
        out = _docker(["run", "--rm", "--network", "none", base, "python3", "-c", probe], timeout=120)
        _base_pythons[base] = out.strip()
    return _base_pythons[base]


def environment_image_name(spec: EnvironmentSpec, base: str) -> str:
    return f"protege-env/py{spec.python or 'base'}:{spec_digest({'env': spec.env_digest(), 'base': base})}"


def build_environment_image(spec: EnvironmentSpec, base: str, log: Callable[[str], None] = print) -> str:
    """The spec's environment image on `base`, built once; returns its name."""
    have = base_python(base)
    if spec.python and spec.python != have:
        raise UnavailablePython(
            f"{spec.label()}: Python {spec.python} is not available in the base image {base} (it has Python {have})"
        )
    name = environment_image_name(spec, base)
    if _image_exists(name):
        return name
    with tempfile.TemporaryDirectory(prefix="protege-env-image-") as tmp:
        context = Path(tmp)
        (context / "Dockerfile").write_text(ENV_DOCKERFILE)
        (context / "requirements.txt").write_text("".join(f"{p}\n" for p in spec.venv_packages()))
        _copy_ca(context / "build-ca.crt")
        log(f"docker: building {name} ({spec.label()}; pip needs --network host)")
        _docker(
            [
                "build",
                "-q",
                "--network",
                "host",
                "--build-arg",
                f"BASE_IMAGE={base}",
                "-t",
                name,
                str(context),
            ]
        )
    return name


def setup_script(spec: EnvironmentSpec) -> str:
    """What the instance image runs in /testbed at build time (as root, no network)."""
    lines = ["set -euxo pipefail", *spec.pre_install]
    if spec.install_repo:
        lines.append(f"{ENV_PREFIX}/bin/pip install -q --no-index --no-deps --no-build-isolation -e .")
    if spec.install:
        lines.append(spec.install)
    lines += ['mkdir -p "$(git rev-parse --git-path info)"', EXCLUDE_NEW_FILES]
    return "\n".join(lines) + "\n"


def build_instance_image(
    spec: EnvironmentSpec,
    repo_dir: Path,
    base_commit: str,
    name: str,
    base: str,
    *,
    log: Callable[[str], None] = print,
    force: bool = False,
) -> str:
    """`name`: the environment image plus `repo_dir` at base_commit in /testbed, installed as the spec says.

    Reused while its labels say it was built from this spec, commit and environment image."""
    env_image = build_environment_image(spec, base, log)
    stamp = f"{spec.digest()}:{base_commit}:{env_image}"
    if not force and _image_exists(name) and _label(name, "protege.spec") == stamp:
        return name
    with tempfile.TemporaryDirectory(prefix="protege-instance-image-") as tmp:
        context = Path(tmp)
        _checkout(repo_dir, base_commit, context / "testbed")
        (context / "Dockerfile").write_text(INSTANCE_DOCKERFILE)
        (context / "setup.sh").write_text(setup_script(spec))
        log(f"docker: building {name} on {env_image}")
        argv = ["build", "-q", "--network", "none", "--build-arg", f"ENV_IMAGE={env_image}"]
        argv += [
            "--label",
            f"protege.env={env_image}",
            "--label",
            f"protege.spec={stamp}",
            "-t",
            name,
            str(context),
        ]
        _docker(argv)
    return name


def _checkout(repo_dir: Path, base_commit: str, dest: Path) -> None:
    """A clone of `repo_dir` checked out (detached) at base_commit; the sandbox strips later history."""
    for argv, cwd in (
        (["git", "clone", "--quiet", "--no-hardlinks", str(repo_dir), str(dest)], None),
        (["git", "-c", "advice.detachedHead=false", "checkout", "--quiet", base_commit], dest),
    ):
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise EngineError(f"{shlex.join(argv[:3])} in {repo_dir}: {done.stderr.strip()[-400:]}")


def engine_base() -> str:
    """The base image this engine builds on: the imported debootstrap one when present, else the public one."""
    from protege.docker_engine import LOCAL_BASE, PUBLIC_BASE

    return LOCAL_BASE if _image_exists(LOCAL_BASE) else PUBLIC_BASE


def instance_image_name(task, spec: EnvironmentSpec) -> str:
    """The row's `image`, or `protege-instance/<instance_id>:<spec digest>` when it has none."""
    return task.image or f"protege-instance/{task.instance_id.lower()}:{spec.digest()}"


def ensure_task_image(task, spec: EnvironmentSpec, repos_dir: Path, log: Callable[[str], None] = print):
    """`task` with an `image` the engine can run: one present is used as is; a missing one is built from the
    repository under `repos_dir` when it is there, else left to the harness to pull (a row without an image and
    without its repository is an EngineError naming both)."""
    if spec.is_host:  # protege's own environment, in a container: the base's Python with protege's pytest
        from protege.docker_engine import DEMO_PYTEST

        spec = spec.model_copy(update={"packages": [DEMO_PYTEST]})
    name = instance_image_name(task, spec)
    if _image_exists(name):
        return task if task.image == name else task.model_copy(update={"image": name})
    repo = Path(repos_dir) / task.repo_dirname
    if not repo.is_dir() and task.image:
        return task  # a prebuilt image from a registry: the harness pulls it
    if not repo.is_dir():
        raise EngineError(
            f"image {name} is not in the Docker engine and repository {task.repo} is missing to build it: no {repo} "
            f"(tasks.repos_dir is {repos_dir})"
        )
    build_instance_image(spec, repo, task.base_commit, name, engine_base(), log=log)
    return task.model_copy(update={"image": name})


def build_demo_images(base: str, log: Callable[[str], None] = print, force: bool = False) -> list[str]:
    """Every demo task's instance image (its `image` column), each built once; returns their names: those that
    need only pytest share docker_engine's demo environment image, `demo:deps` gets its own."""
    from protege.demo.build import build_repo, head_commit
    from protege.demo.spec import load_specs
    from protege.docker_engine import build_demo_images as build_plain_demo_images
    from protege.docker_engine import spec_image
    from protege.environments import builtin_spec

    built = build_plain_demo_images(base, log=log, force=force)
    with tempfile.TemporaryDirectory(prefix="protege-demo-images-") as tmp:
        for demo in load_specs():
            if demo.environment is None:
                continue
            repo = build_repo(demo, Path(tmp))
            spec = builtin_spec(demo.repo)
            built.append(
                build_instance_image(
                    spec, repo, head_commit(repo), spec_image(demo), base, log=log, force=force
                )
            )
    return built
