"""Per-task environments: the Python and packages a task's tests need, and where they live.

Every task resolves to an `EnvironmentSpec` (`resolve_environment`), from the first of:
1. the row itself: its `environment` column;
2. the repository's own environment file, `.protege/environment.yaml` committed at base_commit;
3. the per-repository spec file the user passes (`agent.sandbox.environments.spec_file`): a YAML
   mapping from `owner/name` (or `owner/name@version`, which wins) to a spec;
4. the built-in spec of a bundled demo repository (its `task.yaml`'s `environment`);
5. otherwise the empty spec: the environment protege itself runs in (it has pytest).

A spec looks like swebench's per-version specs:

    python: "3.11"                 # major.minor; empty = protege's own interpreter
    packages: [pytest==9.2.0, more-itertools==11.2.1]   # requirement specifiers, installed from the index
    pre_install: []                # shell lines run in the episode's copy before `install`
    install: ""                    # shell line run in the episode's copy (no network)
    install_repo: true             # install the repository in development mode (editable, offline)

Local backend (`prepare_local_environment`): one virtualenv per `env_digest` (python + packages) under
`environments.cache_dir`, built once with uv (against pip, bench/results/envs_install.json: 1.6 s against
37.6 s from an empty cache, 0.8 s against 35.7 s from a full one, and the in-sandbox editable install
3.2 s against 6.3 s, on 2 cores at load 25), under a file lock
so concurrent episodes build it once; the sandbox mounts it read-only and puts its `bin` first on PATH.
`episode_setup_script` gives the commands that run in each episode's copy: the pre-install and install
lines, and for `install_repo` an editable install into a per-episode prefix the venv's
`_protege_episode.pth` adds to sys.path (the venv itself stays read-only and shared).

A Python version this machine cannot provide raises `UnavailablePython` naming the environment; it never
falls back to another interpreter. The Docker images are built in `protege.environment_images`.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from pydantic import ValidationError

from protege.tasks import EnvironmentSpec, TaskInstance

if TYPE_CHECKING:
    from protege.config import EnvironmentConfig

__all__ = ["EnvironmentSpec"]  # defined with the row schema it is a column of (protege.tasks)

REPO_ENV_FILE = ".protege/environment.yaml"
"""Where a repository keeps its own environment spec (read at the task's base_commit)."""
EPISODE_PREFIX_NAME = ".protege-episode"
"""Directory, under the sandbox's private /tmp, of an episode's editable install (never in the work tree)."""
EPISODE_SITE_VAR = "PROTEGE_EPISODE_SITE"
_MARKER = "protege-environment.json"  # written last: a venv without it is a broken build
_EPISODE_PTH = (
    "import os, site; site.addsitedir(os.environ['PROTEGE_EPISODE_SITE']) "
    "if os.environ.get('PROTEGE_EPISODE_SITE') else None\n"
)
_HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class EnvironmentSpecError(ValueError):
    """A spec (file or row) is malformed; the message names the file or instance, the key and field."""


class EnvironmentBuildError(RuntimeError):
    """An environment could not be built; the message names the environment and says why."""


class UnavailablePython(EnvironmentBuildError):
    """The spec asks for a Python version this machine cannot provide."""


def parse_spec(data: Any, where: str) -> EnvironmentSpec:
    """A spec from a mapping; EnvironmentSpecError naming `where` and the bad field otherwise."""
    if not isinstance(data, Mapping):
        raise EnvironmentSpecError(f"{where}: an environment must be a mapping, got {type(data).__name__}")
    try:
        return EnvironmentSpec.model_validate({"name": where, **data})
    except ValidationError as err:
        item = err.errors()[0]
        field = ".".join(str(p) for p in item["loc"]) or "(spec)"
        raise EnvironmentSpecError(f"{where}: {field}: {item['msg'].removeprefix('Value error, ')}") from None


# --------------------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------------------


def load_spec_file(path: str | Path) -> dict[str, EnvironmentSpec]:
    """The user's per-repository specs: `{owner/name[@version]: spec}`; one-line errors naming the key."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as err:
        raise EnvironmentSpecError(f"{path}: cannot read the environment spec file: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise EnvironmentSpecError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise EnvironmentSpecError(f"{path}: top level must map owner/name to a spec")
    return {str(key): parse_spec(value, f"{path}: {key}") for key, value in data.items()}


@functools.lru_cache(maxsize=8)
def _cached_spec_file(path: str, mtime_ns: int) -> dict[str, EnvironmentSpec]:
    return load_spec_file(path)


def user_specs(cfg: EnvironmentConfig) -> dict[str, EnvironmentSpec]:
    """The configured spec file (read once per change), or none."""
    if not cfg.spec_file:
        return {}
    path = Path(cfg.spec_file)
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        raise EnvironmentSpecError(
            f"{path}: environment spec file (agent.sandbox.environments.spec_file) does not exist"
        ) from None
    return _cached_spec_file(str(path), mtime)


def repository_spec(task: TaskInstance, repo_dir: Path) -> EnvironmentSpec | None:
    """The repository's own `.protege/environment.yaml` at base_commit, if it has one."""
    if not (repo_dir / ".git").exists() and not (repo_dir / "HEAD").is_file():
        return None
    show = ["git", "show", f"{task.base_commit}:{REPO_ENV_FILE}"]
    done = subprocess.run(show, cwd=repo_dir, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return None
    where = f"{task.repo}:{REPO_ENV_FILE}@{task.base_commit[:12]}"
    try:
        data = yaml.safe_load(done.stdout) or {}
    except yaml.YAMLError as err:
        raise EnvironmentSpecError(f"{where}: not valid YAML ({str(err).splitlines()[0]})") from None
    return parse_spec(data, where)


def builtin_spec(repo: str) -> EnvironmentSpec | None:
    """The spec a bundled demo repository declares in its task.yaml."""
    return _builtin_specs().get(repo)


@functools.cache
def _builtin_specs() -> dict[str, EnvironmentSpec]:
    """Package data: read once per process (every sandbox resolves its task's environment)."""
    from protege.demo.spec import load_specs

    return {
        demo.repo: parse_spec(demo.environment, f"built-in environment of {demo.repo}")
        for demo in load_specs()
        if demo.environment is not None
    }


def _build_requires(task: TaskInstance, repo_dir: Path) -> list[str]:
    """The repository's `[build-system] requires` at base_commit (none when it has no pyproject.toml)."""
    show = ["git", "show", f"{task.base_commit}:pyproject.toml"]
    done = subprocess.run(show, cwd=repo_dir, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return []
    try:
        requires = tomllib.loads(done.stdout).get("build-system", {}).get("requires", [])
    except tomllib.TOMLDecodeError:
        return []  # the editable install itself will say what is wrong with it
    return [r for r in requires if isinstance(r, str)]


def with_build_requirements(
    spec: EnvironmentSpec, task: TaskInstance, repo_dir: Path | None
) -> EnvironmentSpec:
    """For `install_repo`, the spec plus the repository's build requirements it does not list already: the
    editable install runs offline, so its build backend must be in the environment (setuptools always is,
    see `venv_packages`)."""
    if not spec.install_repo or repo_dir is None or not repo_dir.is_dir():
        return spec
    try:
        have = {canonicalize_name(Requirement(p).name) for p in spec.packages} | {"setuptools"}
        extra = [
            r for r in _build_requires(task, repo_dir) if canonicalize_name(Requirement(r).name) not in have
        ]
    except InvalidRequirement:
        return spec
    return spec.model_copy(update={"packages": [*spec.packages, *extra]}) if extra else spec


def resolve_environment(
    task: TaskInstance,
    repo_dir: str | Path | None,
    specs: Mapping[str, EnvironmentSpec] | None = None,
) -> EnvironmentSpec:
    """The task's environment, from (in order) its row, its repository's environment file, `specs`
    (the user's spec file), the built-in demo specs; else the empty spec (protege's own environment).
    An `install_repo` spec gains the repository's build requirements (`with_build_requirements`)."""
    repo_dir = Path(repo_dir) if repo_dir is not None else None
    return with_build_requirements(_first_spec(task, repo_dir, specs), task, repo_dir)


def _first_spec(
    task: TaskInstance, repo_dir: Path | None, specs: Mapping[str, EnvironmentSpec] | None
) -> EnvironmentSpec:
    if task.environment is not None:
        return task.environment.model_copy(
            update={"name": task.environment.name or f"environment of row {task.instance_id}"}
        )
    if repo_dir is not None and (found := repository_spec(task, repo_dir)) is not None:
        return found
    specs = specs or {}
    for key in (f"{task.repo}@{task.version}", task.repo):
        if key in specs:
            return specs[key]
    return builtin_spec(task.repo) or EnvironmentSpec(name="protege's own environment")


# --------------------------------------------------------------------------------------------------
# Local virtualenvs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalEnvironment:
    """A built virtualenv: where it is, its interpreter's version, and whether this call built it."""

    spec: EnvironmentSpec
    path: Path
    python_version: str
    built_s: float = 0.0
    """Seconds this call spent building it (0 when it was reused)."""

    @property
    def bin_dir(self) -> Path:
        return self.path / "bin"

    @property
    def base_python_dir(self) -> Path:
        """The installation the venv's interpreter comes from (the sandbox mounts it read-only too)."""
        cfg = (self.path / "pyvenv.cfg").read_text()
        home = next(line.split("=", 1)[1].strip() for line in cfg.splitlines() if line.startswith("home"))
        return Path(os.path.realpath(home)).parent

    def episode_site(self, prefix: str) -> str:
        """The site-packages directory an install with `--prefix prefix` writes into."""
        return f"{prefix}/lib/python{self.python_version}/site-packages"


def find_uv() -> str:
    """The uv binary: the `uv` package's (a project dependency), else one on PATH."""
    try:
        from uv import find_uv_bin

        return os.path.realpath(find_uv_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found is None:
            raise EnvironmentBuildError(
                "uv is not installed (it is a dependency of protege: pip install uv)"
            ) from None
        return os.path.realpath(found)


def _version_of(executable: str) -> tuple[str, str] | None:
    """(major.minor, real executable) of an interpreter, or None when it does not run."""
    probe = "import sys; print('%d.%d' % sys.version_info[:2]); print(sys.executable)"
    try:
        done = subprocess.run([executable, "-c", probe], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.split()
    return (lines[0], os.path.realpath(lines[1])) if done.returncode == 0 and len(lines) == 2 else None


def find_python(version: str, spec_label: str = "") -> str:
    """An interpreter of `version` on this machine (PATH, pyenv, /usr); UnavailablePython otherwise."""
    if not version:
        return os.path.realpath(sys.executable)
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [sys.executable, shutil.which(f"python{version}")]
    candidates += [str(p) for p in sorted(pyenv.glob(f"{version}.*/bin/python{version}"), reverse=True)]
    candidates += [f"/usr/local/bin/python{version}", f"/usr/bin/python{version}"]
    for candidate in dict.fromkeys(c for c in candidates if c and os.path.exists(c)):
        found = _version_of(candidate)
        if found and found[0] == version:
            return found[1]
    raise UnavailablePython(
        f"{spec_label or 'environment'}: Python {version} is not available on this machine "
        f"(looked for python{version} on PATH, under {pyenv} and in /usr); install it or change the spec's python"
    )


def _installer_env() -> dict[str, str]:
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
    if _HOST_CA_BUNDLE.is_file():  # a TLS-inspecting proxy's CA is in the host bundle, not in uv's roots
        env.setdefault("SSL_CERT_FILE", str(_HOST_CA_BUNDLE))
    return env


def _run_build(argv: list[str], label: str, timeout_s: float) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=_installer_env())
    except subprocess.TimeoutExpired:
        raise EnvironmentBuildError(
            f"{label}: `{' '.join(argv[:3])}` took longer than {timeout_s:g} s"
        ) from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise EnvironmentBuildError(f"{label}: `{' '.join(argv[:3])}` failed: {' | '.join(tail)}")


def _build_venv(spec: EnvironmentSpec, target: Path, timeout_s: float) -> str:
    python = find_python(spec.python, spec.label())
    uv = find_uv()
    _run_build([uv, "venv", "--quiet", "--python", python, str(target)], spec.label(), timeout_s)
    found = _version_of(str(target / "bin" / "python"))
    if found is None:
        raise EnvironmentBuildError(f"{spec.label()}: the new virtualenv's python does not run")
    packages = spec.venv_packages()
    if packages:
        argv = [uv, "pip", "install", "--quiet", "--python", str(target / "bin" / "python"), *packages]
        _run_build(argv, spec.label(), timeout_s)
    site = target / "lib" / f"python{found[0]}" / "site-packages"
    (site / "_protege_episode.pth").write_text(_EPISODE_PTH)
    return found[0]


def prepare_local_environment(
    spec: EnvironmentSpec, cache_dir: str | Path, *, timeout_s: float = 900.0
) -> LocalEnvironment | None:
    """The spec's virtualenv under `cache_dir/<env_digest>`, built once (None: the spec is protege's own
    environment). Concurrency-safe: a file lock per digest; a half-built venv is rebuilt."""
    if spec.is_host:
        return None
    cache = Path(cache_dir).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    digest = spec.env_digest()
    target = cache / digest
    marker = target / _MARKER
    if marker.is_file():  # fast path, no lock: the marker is written last
        return LocalEnvironment(spec, target, json.loads(marker.read_text())["python_version"])
    with open(cache / f"{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file():
            return LocalEnvironment(spec, target, json.loads(marker.read_text())["python_version"])
        shutil.rmtree(target, ignore_errors=True)
        started = time.monotonic()
        try:
            version = _build_venv(spec, target, timeout_s)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        built_s = time.monotonic() - started
        record = {"python_version": version, "spec": spec.model_dump(exclude={"name"}), "built_s": built_s}
        marker.write_text(json.dumps(record, indent=2) + "\n")
        return LocalEnvironment(spec, target, version, built_s)


def environment_for(
    cfg: EnvironmentConfig, task: TaskInstance, repos_dir: str | Path | None
) -> tuple[EnvironmentSpec, LocalEnvironment | None]:
    """Resolve the task's spec with the configured spec file and build its venv (see the module doc)."""
    repo_dir = Path(repos_dir) / task.repo_dirname if repos_dir is not None else None
    spec = resolve_environment(task, repo_dir, user_specs(cfg))
    return spec, prepare_local_environment(spec, cfg.cache_dir, timeout_s=cfg.build_timeout_s)


# --------------------------------------------------------------------------------------------------
# What runs in each episode's copy
# --------------------------------------------------------------------------------------------------

EXCLUDE_NEW_FILES = "git status --porcelain --untracked-files=all | sed -n 's/^?? //p' >> \"$(git rev-parse --git-path info/exclude)\""
"""Files the install left in the tree are ignored, so they never become part of a patch."""


def episode_setup_script(spec: EnvironmentSpec, env: LocalEnvironment | None, tmp: str) -> str:
    """Shell lines run once in the episode's work tree, before the agent or the tests (empty: nothing);
    `tmp` is the sandbox's private temporary directory, as its commands see it."""
    lines = list(spec.pre_install)
    if spec.install_repo and env is not None:
        python = shlex.quote(str(env.bin_dir / "python"))
        lines.append(
            f"UV_CACHE_DIR={tmp}/.uv-cache {shlex.quote(find_uv())} pip install --quiet --offline --no-deps "
            f"--no-build-isolation --python {python} --prefix {tmp}/{EPISODE_PREFIX_NAME} -e ."
        )
    if spec.install:
        lines.append(spec.install)
    if not lines:
        return ""
    return (
        "\n".join(["set -e", *lines, 'mkdir -p "$(git rev-parse --git-path info)"', EXCLUDE_NEW_FILES]) + "\n"
    )


def sandbox_variables(env: LocalEnvironment | None, tmp: str) -> dict[str, str]:
    """Environment variables of every command of the episode (PATH is the sandbox's business)."""
    if env is None:
        return {}
    return {"VIRTUAL_ENV": str(env.path), EPISODE_SITE_VAR: env.episode_site(f"{tmp}/{EPISODE_PREFIX_NAME}")}
