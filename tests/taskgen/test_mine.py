"""`tasks mine` on a bundled repository's own history: the feature commit becomes an instance that real
grading verifies; the root commit and a commit that changes no test outcome are skipped with reasons."""

from __future__ import annotations

from pathlib import Path

import pytest

from protege.cli import main
from protege.taskgen.core import TaskgenError, git, is_test_file
from protege.taskgen.mine import MineOptions, mine
from protege.tasksets import load_task_set
from protege.verify import verify_task_set
from tests.taskgen.test_generate import grading_config


def test_mining_a_bundled_history_gives_a_verified_instance_and_reasons(tmp_path: Path) -> None:
    opts = MineOptions(out=tmp_path / "mined.jsonl", repos_dir=tmp_path / "repos")
    lines: list[str] = []
    report = mine("demo:lrucache", "..HEAD", opts, say=lines.append)
    repo_dir = tmp_path / "repos" / "protege-demo__lrucache"
    root, feature, typed = git(repo_dir, "rev-list", "--reverse", "HEAD").split()
    assert report.skipped == {
        root: "root commit: no parent to run the tests at",
        typed: "changes no test outcome: 7 test(s) pass and 0 do not, before and after the change",
    }
    assert any(line.startswith("[3/3]") and "skipped: changes no test outcome" in line for line in lines)
    [task] = load_task_set(str(opts.out))
    assert task.instance_id == f"protege-demo__lrucache-{feature[:10]}" and task.base_commit == root
    assert task.FAIL_TO_PASS == ["tests/test_memoize.py::test_memoized_function_runs_once_per_argument"]
    assert "+++ b/lrucache/memoize.py" in task.patch and "tests/" not in task.patch
    assert "+++ b/tests/test_memoize.py" in task.test_patch
    assert task.problem_statement == "Add lru_memoize decorator\n"
    verdict = verify_task_set([task], grading_config(tmp_path), opts.repos_dir, 2)
    assert verdict.ok, verdict.table()


def test_an_issue_file_is_the_statement_and_the_cli_exit_codes(tmp_path: Path, capsys) -> None:
    issue = tmp_path / "issue.md"
    issue.write_text("Memoized functions run every time.\n")
    out, repos = tmp_path / "m.jsonl", f"tasks.repos_dir={tmp_path / 'repos'}"
    assert (
        main(["tasks", "mine", "demo:lrucache", "HEAD~1", "--issue", str(issue), "--out", str(out), repos])
        == 0
    )
    assert load_task_set(str(out))[0].problem_statement == issue.read_text()
    assert main(["tasks", "mine", "demo:lrucache", "HEAD", "--out", str(out), repos]) == 1  # nothing mined
    assert main(["tasks", "mine", "demo:lrucache", "no-such-commit", repos]) == 2
    assert "no commit 'no-such-commit'" in capsys.readouterr().err
    with pytest.raises(TaskgenError, match="one problem statement for 3 commits"):
        mine("demo:lrucache", "..HEAD", MineOptions(issue=str(issue), repos_dir=tmp_path / "repos"))


@pytest.mark.parametrize(
    ("path", "is_test"),
    [
        ("tests/test_x.py", True),
        ("pkg/tests/helpers.py", True),
        ("test_top.py", True),
        ("pkg/x_test.py", True),
        ("conftest.py", True),
        ("pkg/testing_utils.py", False),
        ("pkg/contest.py", False),
        ("README.md", False),
    ],
)
def test_test_files_are_told_from_code(path: str, is_test: bool) -> None:
    assert is_test_file(path) is is_test
