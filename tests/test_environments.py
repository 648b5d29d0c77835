"""Per-task environments (protege.environments): resolution order, digests, spec errors, a Python this
machine lacks, and the bundled `demo:deps` repository verified in its own uv-built venv, twice."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from protege.environments import (
    REPO_ENV_FILE,
    EnvironmentSpec,
    EnvironmentSpecError,
    UnavailablePython,
    find_python,
    find_uv,
    load_spec_file,
    prepare_local_environment,
    resolve_environment,
)
from tests.grading_helpers import make_task


def _repo_with_env_file(path, content: str) -> str:
    """A git repository whose only commit holds `.protege/environment.yaml`; returns that commit."""
    (path / ".protege").mkdir(parents=True, exist_ok=True)
    (path / REPO_ENV_FILE).write_text(content)
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "env"]):
        subprocess.run(["git", *args], cwd=path, check=True, env={**env, "PATH": "/usr/bin:/bin"})
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=path, check=True, capture_output=True, text=True
    ).stdout.strip()


def test_resolution_order_row_then_repository_then_user_specs_then_builtin(tmp_path):
    repo = tmp_path / "acme__calc"
    base = _repo_with_env_file(repo, "python: '3.11'\npackages: [attrs==25.1.0]\n")
    task = make_task().model_copy(update={"base_commit": base})
    specs = {
        "acme/calc": EnvironmentSpec(name="specs: acme/calc", packages=["six"]),
        "acme/calc@1.0": EnvironmentSpec(name="specs: acme/calc@1.0", packages=["six==1.17.0"]),
    }
    row = task.model_copy(update={"environment": EnvironmentSpec(packages=["pytest"])})
    assert resolve_environment(row, repo, specs).name == "environment of row acme__calc-1"
    from_repo = resolve_environment(task, repo, specs)
    assert from_repo.packages == ["attrs==25.1.0"] and from_repo.name.startswith(
        f"acme/calc:{REPO_ENV_FILE}@"
    )
    assert resolve_environment(task, tmp_path / "absent", specs).name == "specs: acme/calc@1.0"
    other_version = task.model_copy(update={"version": "2.0"})
    assert resolve_environment(other_version, None, specs).name == "specs: acme/calc"
    assert resolve_environment(task, None, {}).is_host
    from protege.demo import demo_tasks

    builtin = resolve_environment(demo_tasks("deps")[0], None, {})
    assert builtin.name == "built-in environment of protege-demo/pagination" and builtin.install_repo
    assert "more-itertools==11.2.1" in builtin.packages
    assert all(resolve_environment(t, None, {}).is_host for t in demo_tasks("all"))


def test_digests_are_stable_and_say_what_changed():
    spec = EnvironmentSpec(name="a", python="3.11", packages=["pytest==9.2.0"])
    assert spec.digest() == EnvironmentSpec(name="b", python="3.11", packages=["pytest==9.2.0"]).digest()
    with_install = spec.model_copy(update={"install": "make develop"})
    assert with_install.env_digest() == spec.env_digest() and with_install.digest() != spec.digest()
    assert spec.model_copy(update={"install_repo": True}).venv_packages() == [
        "pytest==9.2.0",
        "setuptools>=70.1",
    ]
    assert spec.model_copy(update={"packages": ["pytest==9.1.0"]}).env_digest() != spec.env_digest()
    assert spec.env_digest() == "20d4aada028168cb"  # the cache key must not move between releases


def test_spec_file_errors_name_the_file_key_and_field(tmp_path):
    path = tmp_path / "envs.yaml"
    path.write_text("acme/calc:\n  python: three\n")
    with pytest.raises(
        EnvironmentSpecError, match=r"envs.yaml: acme/calc: python: must be a major.minor version"
    ):
        load_spec_file(path)
    path.write_text("acme/calc:\n  packges: [six]\n")
    with pytest.raises(EnvironmentSpecError, match=r"acme/calc: packges: Extra inputs are not permitted"):
        load_spec_file(path)
    path.write_text("acme/calc:\n  packages: [six==1.17.0]\n  install_repo: true\n")
    assert load_spec_file(path)["acme/calc"].packages == ["six==1.17.0"]


def test_a_row_with_a_bad_environment_is_named_by_the_loader(tmp_path):
    from protege.tasksets import TaskSetError, load_task_set

    row = make_task().to_swebench() | {"environment": {"python": "3.11", "packages": "pytest"}}
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(TaskSetError, match=r"tasks.jsonl:1 \[acme__calc-1\]: environment.packages"):
        load_task_set(str(path))


def test_a_python_this_machine_lacks_is_an_error_naming_the_environment(tmp_path):
    with pytest.raises(
        UnavailablePython, match=r"^specs.yaml: acme/calc: Python 3.4 is not available on this machine"
    ):
        find_python("3.4", "specs.yaml: acme/calc")
    spec = EnvironmentSpec(name="specs.yaml: acme/calc", python="3.4", packages=["six"])
    with pytest.raises(UnavailablePython):
        prepare_local_environment(spec, tmp_path / "envs")
    assert not list((tmp_path / "envs").glob("*/bin")), "no half-built venv is left behind"
    assert prepare_local_environment(EnvironmentSpec(), tmp_path / "envs") is None  # protege's own


def _uv_or_skip() -> None:
    try:
        find_uv()
    except Exception as err:
        pytest.skip(str(err))
    if shutil.which("bwrap") is None:
        pytest.skip("needs bubblewrap")


def test_deps_demo_verifies_in_its_own_environment_and_reuses_it(tmp_path):
    """Must show (issue 14): the repository whose tests import more-itertools verifies locally, gold resolves
    and empty fails; the second verify reuses the venv. Needs uv and the package index."""
    _uv_or_skip()
    from protege.agent.sandbox import open_sandbox
    from protege.config import ProtegeConfig
    from protege.demo import build_demo_repos, demo_tasks
    from protege.verify import verify_task_set

    repos = tmp_path / "repos"
    build_demo_repos(repos, only=["protege-demo/pagination"])
    cfg = ProtegeConfig.model_validate(
        {
            "agent": {"sandbox": {"backend": "local", "environments": {"cache_dir": str(tmp_path / "envs")}}},
            "eval": {"grade_logs_dir": str(tmp_path / "grading")},
        }
    )
    tasks = demo_tasks("deps")
    timings = []
    for _ in range(2):
        started = time.monotonic()
        report = verify_task_set(tasks, cfg, repos, workers=2)
        timings.append(time.monotonic() - started)
        assert report.ok, report.table()
        (verdict,) = report.verdicts
        assert verdict.gold.resolved and not verdict.empty.resolved
        assert verdict.empty.tests_status["FAIL_TO_PASS"]["failure"] == tasks[0].FAIL_TO_PASS
    (venv,) = [p for p in (tmp_path / "envs").iterdir() if p.is_dir()]
    record = json.loads((venv / "protege-environment.json").read_text())
    print(
        f"deps demo verify: first {timings[0]:.1f} s (venv built in {record['built_s']:.1f} s), second {timings[1]:.1f} s"
    )
    with open_sandbox(cfg.agent.sandbox, tasks[0], repos) as sandbox:
        probe = sandbox.run(
            "python -c 'import more_itertools, pagination; print(pagination.__file__)'; "
            'touch "$VIRTUAL_ENV/x" 2>/dev/null && echo writable || echo read-only; git status --porcelain'
        )
    assert probe.exit_code == 0, probe.output
    assert probe.output.split() == ["/testbed/src/pagination/__init__.py", "read-only"]


@pytest.mark.docker
def test_deps_demo_verifies_on_docker_in_its_layered_images(docker_engine, tmp_path):
    """Must show (issue 14), Docker half: the instance image sits on an environment image holding
    more-itertools; gold resolves, empty fails. A Python the base image lacks is an error naming the spec."""
    from protege.config import ProtegeConfig
    from protege.demo import build_demo_repos, demo_tasks
    from protege.docker_engine import _label
    from protege.environment_images import build_environment_image, engine_base
    from protege.verify import verify_task_set

    repos = tmp_path / "repos"
    build_demo_repos(repos, only=["protege-demo/pagination"])
    cfg = ProtegeConfig.model_validate(
        {"agent": {"sandbox": {"backend": "docker"}}, "eval": {"grade_logs_dir": str(tmp_path / "grading")}}
    )
    (task,) = demo_tasks("deps")
    report = verify_task_set([task], cfg, repos, workers=1)
    assert report.ok, report.table()
    assert report.verdicts[0].gold.resolved and not report.verdicts[0].empty.resolved
    assert _label(task.image, "protege.env").startswith("protege-env/py3.11:")
    wrong = EnvironmentSpec(name="specs.yaml: acme/calc", python="3.12", packages=["six"])
    with pytest.raises(
        UnavailablePython, match=r"^specs.yaml: acme/calc: Python 3.12 is not available in the base"
    ):
        build_environment_image(wrong, engine_base())


def test_install_repo_gains_the_repositorys_build_backend(tmp_path):
    repo = tmp_path / "acme__calc"
    (repo / ".protege").mkdir(parents=True)
    (repo / "pyproject.toml").write_text('[build-system]\nrequires = ["hatchling>=1.20", "setuptools>=61"]\n')
    base = _repo_with_env_file(repo, "packages: [pytest==9.2.0]\ninstall_repo: true\n")
    spec = resolve_environment(make_task().model_copy(update={"base_commit": base}), repo, {})
    assert spec.packages == ["pytest==9.2.0", "hatchling>=1.20"]
    assert spec.venv_packages() == ["pytest==9.2.0", "hatchling>=1.20", "setuptools>=70.1"]


def test_concurrent_episodes_build_one_venv(tmp_path):
    _uv_or_skip()
    from concurrent.futures import ThreadPoolExecutor

    spec = EnvironmentSpec(name="tiny", packages=["more-itertools==11.2.1"])
    with ThreadPoolExecutor(3) as pool:
        envs = list(pool.map(lambda _: prepare_local_environment(spec, tmp_path / "envs"), range(3)))
    assert len({env.path for env in envs}) == 1
    assert sum(env.built_s > 0 for env in envs) == 1, (
        "exactly one caller built it; the others waited and reused it"
    )
    done = subprocess.run([envs[0].bin_dir / "python", "-c", "import more_itertools"], check=False)
    assert done.returncode == 0


def test_docker_rows_with_a_prebuilt_image_use_it_and_rows_without_need_their_repository(tmp_path):
    from protege.docker_engine import EngineError
    from protege.environment_images import ensure_task_image

    prebuilt = make_task().model_copy(update={"image": "registry.example/acme-calc:sha256-abc"})
    assert ensure_task_image(prebuilt, EnvironmentSpec(), tmp_path) is prebuilt  # the harness pulls it
    bare = make_task().model_copy(update={"image": ""})
    with pytest.raises(
        EngineError, match=r"repository acme/calc is missing to build it: no .*acme__calc \(tasks.repos_dir"
    ):
        ensure_task_image(bare, EnvironmentSpec(packages=["six"]), tmp_path)
