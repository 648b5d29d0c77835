"""`tasks generate` end to end on a bundled repository: every kept mutation is an instance that real
grading verifies (gold resolves, empty fails); reruns resume; a lost snapshot commit is recreated."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from protege.config import ProtegeConfig
from protege.taskgen.core import TaskgenError, git
from protege.taskgen.generate import GenerateOptions, generate
from protege.taskgen.split import unique_rows, write_split
from protege.taskgen.statement import changed_lines
from protege.tasks import TaskInstance
from protege.tasksets import load_task_set, task_set_digest
from protege.verify import verify_task_set


def grading_config(tmp_path: Path) -> ProtegeConfig:
    return ProtegeConfig.model_validate(
        {
            "agent": {"sandbox": {"backend": "local", "command_timeout_s": 60}},
            "eval": {"grade_logs_dir": str(tmp_path / "grading"), "workers": 2},
        }
    )


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[GenerateOptions, dict, list[str]]:
    root = tmp_path_factory.mktemp("generate")
    opts = GenerateOptions(n=2, out=root / "out", repos_dir=root / "repos", workers=2)
    lines: list[str] = []
    manifest = generate(["demo:unitconv"], opts, say=lines.append)
    return opts, manifest, lines


def test_kept_mutations_become_instances_that_verify(generated, tmp_path: Path) -> None:
    opts, manifest, lines = generated
    rows = unique_rows(opts.out / "instances.jsonl")
    assert len(rows) == 2 and manifest["runs"]["protege-demo/unitconv"]["valid"] == 2
    assert any("ETA" in line for line in lines)
    repo_dir = opts.repos_dir / "protege-demo__unitconv"
    for row in rows:
        task = TaskInstance.model_validate(row)
        assert row["mutation"]["kind"] not in task.instance_id  # the id gives nothing of the bug away
        assert task.FAIL_TO_PASS and set(task.FAIL_TO_PASS).isdisjoint(task.PASS_TO_PASS)
        # parentless: the history holds nothing of the mutation
        assert git(repo_dir, "rev-list", "--parents", "-n", "1", task.base_commit).split() == [
            task.base_commit
        ]
        base_files = git(repo_dir, "ls-tree", "-r", "--name-only", task.base_commit).split()
        for hidden in row["hidden_tests"]:
            assert hidden not in base_files and f"+++ b/{hidden}" in task.test_patch
        for line in changed_lines(task.patch):
            assert line not in task.problem_statement
    report = verify_task_set(
        [TaskInstance.model_validate(r) for r in rows], grading_config(tmp_path), opts.repos_dir, 2
    )
    assert report.ok, report.table()


def test_a_rerun_resumes_and_recreates_lost_commits(generated) -> None:
    opts, manifest, _ = generated
    before = unique_rows(opts.out / "instances.jsonl")
    shutil.rmtree(opts.repos_dir / "protege-demo__unitconv")  # a rebuilt repository lost the snapshots
    lines: list[str] = []
    again = generate(["demo:unitconv"], opts, say=lines.append)
    assert again["runs"]["protege-demo/unitconv"]["tried"] == 0
    assert any("recreated 2 snapshot commit(s)" in line for line in lines)
    assert unique_rows(opts.out / "instances.jsonl") == before
    assert again["train"]["sha256"] == manifest["train"]["sha256"]
    # from scratch into another directory: the same instances, byte for byte (commits, statements, digests)
    fresh = generate(["demo:unitconv"], replace(opts, out=opts.out.parent / "fresh"), say=lines.append)
    assert unique_rows(opts.out.parent / "fresh" / "instances.jsonl") == before
    assert fresh["train"]["sha256"] == manifest["train"]["sha256"]


def test_the_split_keeps_each_repo_or_function_on_one_side_with_digests(tmp_path: Path, generated) -> None:
    opts, _, _ = generated
    row = unique_rows(opts.out / "instances.jsonl")[0]
    rows = [
        {**row, "instance_id": f"{repo}.{fn}.{i}", "repo": repo, "function": fn}
        for repo in ("o/a", "o/b", "o/c", "o/d")
        for fn in ("x.py::f", "x.py::g", "x.py::h")
        for i in range(2)
    ]
    out = tmp_path / "split"
    out.mkdir()
    (out / "instances.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for split, key in (("repo", lambda r: r["repo"]), ("function", lambda r: (r["repo"], r["function"]))):
        manifest = write_split(out, split, eval_fraction=0.25)
        train, evaluation = (load_task_set(str(out / f"{side}.jsonl")) for side in ("train", "eval"))
        assert len(train) + len(evaluation) == len(rows) and evaluation
        by_id = {r["instance_id"]: r for r in rows}
        train_keys = {key(by_id[t.instance_id]) for t in train}
        assert train_keys.isdisjoint(key(by_id[t.instance_id]) for t in evaluation)
        assert manifest["train"]["sha256"] == task_set_digest(train)
        assert manifest["eval"]["sha256"] == task_set_digest(evaluation)


def test_a_red_suite_is_skipped_by_name_and_a_bad_repo_is_bad_input(tmp_path: Path) -> None:
    repo = tmp_path / "red"
    (repo / "tests").mkdir(parents=True)
    (repo / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (repo / "tests" / "test_calc.py").write_text(
        "from calc import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n"
    )
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "red")
    lines: list[str] = []
    opts = GenerateOptions(n=1, out=tmp_path / "out", repos_dir=tmp_path / "repos", workers=1)
    manifest = generate([str(repo)], opts, say=lines.append)
    assert "1 test(s) do not pass at HEAD" in manifest["runs"][str(repo)]["error"]
    assert any("tests/test_calc.py::test_add" in line for line in lines)
    with pytest.raises(TaskgenError, match="nowhere: not a git repository"):
        generate([str(tmp_path / "nowhere")], opts)
    with pytest.raises(TaskgenError, match="no bundled repository named 'nope'"):
        generate(["demo:nope"], opts)
