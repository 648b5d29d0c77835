"""Installer choice for per-task environments (protege.environments): pip against uv, same packages.

`python -m bench bench_envs`. Builds the `demo:deps` environment (a venv with pytest and more-itertools,
plus setuptools for the editable install) four ways, each from an empty cache ("cold": every wheel
downloaded from the index) and again with that cache filled ("warm": a new venv, as for a new spec
sharing wheels), then the in-sandbox step, an offline editable install of the repository. The floor is
`python -m venv --without-pip` in the same run, so the ratios hold across machines of different speed.
Needs the package index.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULT = "envs_install"


def _timed(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, env=env, cwd=cwd)
    return time.perf_counter() - started


def _pip(tmp: Path, cache: Path, packages: list[str], env: dict[str, str]) -> float:
    venv = tmp / f"pip-{time.monotonic_ns()}"
    pip_env = {**env, "PIP_CACHE_DIR": str(cache)}
    return _timed([sys.executable, "-m", "venv", str(venv)], env) + _timed(
        [str(venv / "bin" / "pip"), "install", "-q", *packages], pip_env
    )


def _uv(tmp: Path, cache: Path, packages: list[str], env: dict[str, str], uv: str) -> float:
    venv = tmp / f"uv-{time.monotonic_ns()}"
    uv_env = {**env, "UV_CACHE_DIR": str(cache)}
    return _timed([uv, "venv", "-q", "--python", sys.executable, str(venv)], uv_env) + _timed(
        [uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), *packages], uv_env
    )


def _editable(tmp: Path, installer: list[str], env: dict[str, str]) -> float:
    """Offline editable install of the pagination demo repository into a fresh prefix."""
    from protege.demo.build import build_repo
    from protege.demo.spec import load_specs

    (spec,) = [s for s in load_specs() if s.name == "pagination"]
    repo = build_repo(spec, tmp / f"repo-{time.monotonic_ns()}")
    prefix = tmp / f"prefix-{time.monotonic_ns()}"
    argv = [*installer, "--no-deps", "--no-build-isolation", "--prefix", str(prefix), "-e", "."]
    return _timed(argv, env, cwd=repo)


def run() -> dict:
    from protege.demo import demo_tasks
    from protege.environments import _installer_env, find_uv, resolve_environment

    uv = find_uv()
    packages = resolve_environment(demo_tasks("deps")[0], None, {}).venv_packages()
    env = _installer_env()
    result: dict = {
        "packages": packages,
        "uv": subprocess.run([uv, "--version"], capture_output=True, text=True).stdout.strip(),
    }
    with tempfile.TemporaryDirectory(prefix="bench-envs-") as tmp_dir:
        tmp = Path(tmp_dir)
        result["floor_venv_without_pip_s"] = _timed(
            [sys.executable, "-m", "venv", "--without-pip", str(tmp / "floor")], env
        )
        for name, build in (("pip", _pip), ("uv", _uv)):
            cache = tmp / f"{name}-cache"
            extra = (uv,) if name == "uv" else ()
            result[f"{name}_cold_s"] = build(tmp, cache, packages, env, *extra)
            result[f"{name}_warm_s"] = build(tmp, cache, packages, env, *extra)
        pip_python = str(next(tmp.glob("pip-[0-9]*")) / "bin" / "python")  # uv's venvs have no pip
        uv_python = str(next(tmp.glob("uv-[0-9]*")) / "bin" / "python")
        pip_installer = [pip_python, "-m", "pip", "install", "-q", "--no-index"]
        uv_installer = [uv, "pip", "install", "-q", "--offline", "--python", uv_python]
        result["editable_pip_s"] = _editable(tmp, pip_installer, env)
        uv_env = {**env, "UV_CACHE_DIR": str(tmp / "uv-cache")}
        result["editable_uv_s"] = _editable(tmp, uv_installer, uv_env)
        shutil.rmtree(tmp, ignore_errors=True)
    floor = result["floor_venv_without_pip_s"]
    for key in [k for k in result if k.endswith("_s") and k != "floor_venv_without_pip_s"]:
        result[key] = round(result[key], 3)
        result[key.removesuffix("_s") + "_over_floor"] = round(result[key] / floor, 1)
    for kind in ("cold", "warm"):
        result[f"pip_over_uv_{kind}"] = round(result[f"pip_{kind}_s"] / result[f"uv_{kind}_s"], 1)
    result["pip_over_uv_editable"] = round(result["editable_pip_s"] / result["editable_uv_s"], 1)
    result["floor_venv_without_pip_s"] = round(floor, 3)
    result["load_average_1m"] = os.getloadavg()[0]
    return result


if __name__ == "__main__":
    print(run())
