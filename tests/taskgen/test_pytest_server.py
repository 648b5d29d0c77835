"""The fork server reports what `python -m pytest` reports, re-imports edited code, and kills a hung run."""

from __future__ import annotations

from pathlib import Path

from protege.taskgen.core import run_tests
from protege.taskgen.pytest_server import PytestServer

CODE = "def add(a, b):\n    return a + b\n"
TESTS = (
    "import pytest\n\nfrom calc import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n\n\n"
    "@pytest.mark.parametrize('x', [0, 1])\ndef test_zero(x):\n    assert add(x, 0) == x\n\n\n"
    "def test_skip():\n    pytest.skip('not here')\n"
)


def test_statuses_match_a_plain_run_and_edits_are_seen(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "calc.py").write_text(CODE)
    (tmp_path / "tests" / "test_calc.py").write_text(TESTS)
    plain = run_tests(tmp_path)
    assert plain.passed == {
        "tests/test_calc.py::test_add",
        "tests/test_calc.py::test_zero[0]",
        "tests/test_calc.py::test_zero[1]",
    }
    with PytestServer() as server:
        assert server.run(tmp_path).statuses == plain.statuses
        (tmp_path / "calc.py").write_text(CODE.replace("a + b", "a - b"))  # same size: no stale bytecode
        mutated = server.run(tmp_path)
        assert mutated.not_passed == {"tests/test_calc.py::test_add"}
        assert mutated.statuses == run_tests(tmp_path).statuses
        (tmp_path / "calc.py").write_text(CODE.replace("return a + b", "while True:\n        pass"))
        hung = server.run(tmp_path, timeout_s=2)
        assert hung.timed_out and not hung.statuses
        (tmp_path / "calc.py").write_text(CODE)
        assert server.run(tmp_path).statuses == plain.statuses
    assert not list(tmp_path.rglob("*.pyc"))


def test_an_installed_repository_is_put_on_the_path_by_its_import_root(tmp_path: Path) -> None:
    from protege.taskgen.core import TestEnvironment

    assert "PYTHONPATH" not in TestEnvironment().variables(tmp_path)
    assert TestEnvironment(repo_on_path=True).variables(tmp_path)["PYTHONPATH"] == str(tmp_path)
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "pkg" / "__init__.py").write_text("VALUE = 3\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_pkg.py").write_text(
        "import pkg\n\n\ndef test_value():\n    assert pkg.VALUE == 3\n"
    )
    env = TestEnvironment(repo_on_path=True)
    assert env.variables(tmp_path)["PYTHONPATH"] == str(tmp_path / "src")
    with PytestServer(env.python, env.variables(tmp_path)) as server:  # a src/ layout imports as installed
        assert server.run(tmp_path).passed == {"tests/test_pkg.py::test_value"}
    assert run_tests(tmp_path).not_passed  # without it, the package is not importable
