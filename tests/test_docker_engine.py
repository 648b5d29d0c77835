"""protege.docker_engine without a daemon: the mirror apt uses, the cache key of the base rootfs, and the
account of what was tried when no daemon answers (the reason the docker tier prints when it skips)."""

from __future__ import annotations

from pathlib import Path

import pytest

from protege.cli import main
from protege.docker_engine import BASE_PACKAGES, base_tarball, debian_mirror, engine_host


def test_mirror_from_deb822_sources_skips_security(tmp_path: Path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n"
    )
    assert debian_mirror(tmp_path) == "http://mirror.example/debian"


def test_mirror_from_one_line_sources(tmp_path: Path):
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb http://security.example/debian-security bookworm-security main\n"
        "deb [arch=amd64] http://ftp.example/debian bookworm main\n"
    )
    assert debian_mirror(tmp_path) == "http://ftp.example/debian"


def test_mirror_defaults_to_deb_debian_org(tmp_path: Path):
    assert debian_mirror(tmp_path) == "http://deb.debian.org/debian"


def test_base_tarball_is_keyed_by_suite_and_packages(tmp_path: Path):
    path = base_tarball(tmp_path)
    assert path.parent == tmp_path and path.name.startswith("bookworm-minbase-") and path.suffix == ".tar"
    assert "python3-venv" in BASE_PACKAGES and "git" in BASE_PACKAGES


def test_no_daemon_is_an_account_of_every_place_tried(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    monkeypatch.setattr("protege.docker_engine.DEFAULT_STATE_DIR", tmp_path / "state")
    host, account = engine_host(tmp_path / "state")
    if host is not None and host.endswith("/var/run/docker.sock"):
        pytest.skip("a system Docker daemon answers at the default socket here")
    assert host is None
    assert account.startswith("no Docker daemon answers (DOCKER_HOST unix://")
    assert "managed unix://" in account and "default unix:///var/run/docker.sock" in account


def test_status_without_a_daemon_is_one_line_and_exit_1(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    code = main(["docker", "status", "--state-dir", str(tmp_path / "state"), "--cache-dir", str(tmp_path)])
    out = capsys.readouterr().out
    if "default daemon" in out:
        pytest.skip("a system Docker daemon answers at the default socket here")
    assert code == 1 and out.count("\n") == 1 and out.startswith("docker: no Docker daemon answers")
