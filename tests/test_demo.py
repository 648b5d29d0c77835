"""The bundled demo task set: reproducible git histories, a JSONL that cannot go stale, and for every
task the official swebench grading of its eval script (gold patch resolves, no patch does not)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from protege.demo import DemoBuildError, build_demo_repos, demo_tasks
from protege.demo.__main__ import main as demo_main
from protege.demo.build import DEFAULT_BRANCH, GIT_USER_EMAIL, git, head_commit
from protege.demo.spec import JSONL_PATH, _load_spec, load_specs, packaged_name
from protege.demo.taskset import demo_rows, patch_files, render_jsonl
from protege.tasks import TaskInstance

TASKS = demo_tasks("all")
SPECS = {spec.instance_id: spec for spec in load_specs()}
JUNK = {"__pycache__", ".pytest_cache"}


@pytest.fixture(scope="module")
def built_repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_demo_repos(tmp_path_factory.mktemp("demo-repos"))


# --------------------------------------------------------------------------------------------------
# The task set as a whole
# --------------------------------------------------------------------------------------------------


def test_jsonl_is_what_the_sources_and_builder_produce(built_repos: dict[str, Path]) -> None:
    # Recorded base_commit SHAs, patches, issues and eval scripts all come from this rebuild.
    expected = render_jsonl(demo_rows(built_repos))
    assert JSONL_PATH.read_text(encoding="utf-8") == expected, (
        "src/protege/demo/tasks.jsonl is stale: run python -m protege.demo --write-jsonl"
    )
    for task in TASKS:
        assert head_commit(built_repos[task.repo]) == task.base_commit, task.instance_id
        assert built_repos[task.repo].name == task.repo_dirname


def test_splits_sizes_and_bug_coverage() -> None:
    train, evaluation = demo_tasks("train"), demo_tasks("eval")
    assert (len(TASKS), len(train), len(evaluation)) == (12, 8, 4)
    assert len({t.instance_id for t in TASKS}) == len(TASKS)
    assert len({t.repo for t in TASKS}) == len(TASKS)
    assert not {t.repo for t in train} & {t.repo for t in evaluation}
    two_file_fixes = [t for t in TASKS if len(patch_files(t.patch)) == 2]
    assert len(two_file_fixes) >= 3
    assert len({spec.bug_kind for spec in SPECS.values()}) >= 6
    for task in TASKS:
        assert 1 <= len(task.FAIL_TO_PASS) <= 3, task.instance_id
        assert len(task.PASS_TO_PASS) >= 3, task.instance_id
        assert not set(task.FAIL_TO_PASS) & set(task.PASS_TO_PASS), task.instance_id
        assert not any(name.startswith("tests/") for name in patch_files(task.patch)), task.instance_id
        assert all(name.startswith("tests/") for name in patch_files(task.test_patch)), task.instance_id


def test_demo_split_is_validated_and_loadable_as_a_task_set() -> None:
    from protege.tasksets import load_task_set

    with pytest.raises(ValueError, match="train, eval, all"):
        demo_tasks("test")
    assert [t.instance_id for t in load_task_set("demo:eval")] == [t.instance_id for t in demo_tasks("eval")]


def test_problem_statements_do_not_reveal_the_fix() -> None:
    for task in TASKS:
        added = [line[1:].strip() for line in task.patch.splitlines() if line.startswith("+")]
        added = [line for line in added if len(line) >= 8 and not line.startswith("++")]
        assert added, task.instance_id
        leaked = [line for line in added if line in task.problem_statement]
        assert not leaked, f"{task.instance_id}: issue contains gold lines {leaked}"


def test_swebench_accepts_every_row() -> None:
    from swebench.harness.log_parsers import PARSER_REGISTRY
    from swebench.harness.utils import make_test_spec

    for task in TASKS:
        spec = make_test_spec(task.to_swebench())
        assert spec.FAIL_TO_PASS == task.FAIL_TO_PASS and spec.PASS_TO_PASS == task.PASS_TO_PASS
        assert spec.log_parser in PARSER_REGISTRY
        script = spec.eval_script
        assert script.count(">>>>> Start Test Output") == 1 and "SWEBENCH_TEST_EXIT_CODE=$?" in script


def test_bad_task_yaml_names_the_file_and_field(tmp_path: Path) -> None:
    task_dir = tmp_path / "broken"
    task_dir.mkdir()
    (task_dir / "task.yaml").write_text("instance_id: x\nrepo: protege-demo/broken\nsplit: dev\n")
    with pytest.raises(ValueError, match=r"broken/task.yaml: .*split") as err:
        _load_spec(task_dir)
    assert "FAIL_TO_PASS" in str(err.value) and "commits" in str(err.value)


# --------------------------------------------------------------------------------------------------
# The builder
# --------------------------------------------------------------------------------------------------


def _tracked_package_files(files_dir: Path) -> set[str]:
    return {
        p.relative_to(files_dir).as_posix()
        for p in files_dir.rglob("*")
        if p.is_file() and not JUNK & set(p.relative_to(files_dir).parts) and p.suffix != ".pyc"
    }


def test_each_repository_is_a_real_clean_history(built_repos: dict[str, Path]) -> None:
    for spec in SPECS.values():
        repo = built_repos[spec.repo]
        log = git(repo, "log", "--format=%ae %s").splitlines()
        assert [line.split(" ", 1)[1] for line in reversed(log)] == [c.message for c in spec.commits]
        assert all(line.startswith(GIT_USER_EMAIL) for line in log)
        assert git(repo, "symbolic-ref", "--short", "HEAD").strip() == DEFAULT_BRANCH
        assert git(repo, "status", "--porcelain") == ""
        tracked = set(git(repo, "ls-files").splitlines())
        assert tracked == set(spec.committed_files()), spec.name
        packaged = {packaged_name(name) for name in tracked}
        assert packaged == _tracked_package_files(spec.files_dir), spec.name
        assert ".gitignore" in tracked


def test_builder_is_reproducible_idempotent_and_careful(built_repos: dict[str, Path], tmp_path: Path) -> None:
    repo = "protege-demo/lrucache"
    first = build_demo_repos(tmp_path / "a", only=[repo])[repo]
    assert head_commit(first) == head_commit(built_repos[repo])
    # Built again in place: kept as is.
    assert build_demo_repos(tmp_path / "a", only=[repo])[repo] == first
    # A stale build of ours (an extra commit) is replaced.
    (first / "extra.txt").write_text("x\n")
    git(first, "add", "extra.txt")
    git(first, "commit", "-qm", "extra")
    rebuilt = build_demo_repos(tmp_path / "a", only=[repo])[repo]
    assert head_commit(rebuilt) == head_commit(built_repos[repo])
    # Someone else's directory is never deleted.
    foreign = tmp_path / "b" / "protege-demo__lrucache"
    foreign.mkdir(parents=True)
    (foreign / "keep.txt").write_text("mine\n")
    with pytest.raises(DemoBuildError, match="not built by protege.demo"):
        build_demo_repos(tmp_path / "b", only=[repo])
    assert (foreign / "keep.txt").read_text() == "mine\n"
    with pytest.raises(DemoBuildError, match="no demo repository named protege-demo/nope"):
        build_demo_repos(tmp_path / "c", only=["protege-demo/nope"])


def test_cli_builds_repositories(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo_main(["--build", str(tmp_path)]) == 0
    assert f"protege-demo/prioq: {tmp_path / 'protege-demo__prioq'}" in capsys.readouterr().out
    assert (tmp_path / "protege-demo__prioq" / "prioq" / "heap.py").is_file()


# --------------------------------------------------------------------------------------------------
# Every task, graded the official way
# --------------------------------------------------------------------------------------------------


def _run_eval(task: TaskInstance, testbed: Path, log_path: Path) -> None:
    from swebench.harness.utils import make_test_spec

    script = make_test_spec(task.to_swebench()).eval_script.replace("/testbed", str(testbed))
    env = {
        **os.environ,
        # The image's `python` is the one with pytest: here, this interpreter.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
    }
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=False)
    log_path.write_text(result.stdout + result.stderr)


def _grade(task: TaskInstance, log_path: Path, patch: str) -> dict:
    from swebench.harness.grading import get_eval_report, get_logs_eval
    from swebench.harness.utils import make_test_spec

    spec = make_test_spec(task.to_swebench())
    prediction = {"instance_id": task.instance_id, "model_name_or_path": "test", "model_patch": patch}
    report = get_eval_report(spec, prediction, str(log_path), include_tests_status=True)[task.instance_id]
    status_map, found = get_logs_eval(spec, str(log_path))
    assert found, log_path.read_text()
    return {"report": report, "ran": set(status_map)}


@pytest.mark.parametrize("task", TASKS, ids=[t.instance_id for t in TASKS])
def test_gold_patch_resolves_and_base_does_not(
    task: TaskInstance, built_repos: dict[str, Path], tmp_path: Path
) -> None:
    testbed = tmp_path / "testbed"
    shutil.copytree(built_repos[task.repo], testbed)
    git(testbed, "checkout", "--quiet", "--detach", task.base_commit)

    _run_eval(task, testbed, tmp_path / "base.log")
    base = _grade(task, tmp_path / "base.log", "")
    assert base["report"]["patch_successfully_applied"], (tmp_path / "base.log").read_text()
    assert not base["report"]["resolved"]
    status = base["report"]["tests_status"]
    assert sorted(status["FAIL_TO_PASS"]["failure"]) == sorted(task.FAIL_TO_PASS)
    assert sorted(status["PASS_TO_PASS"]["success"]) == sorted(task.PASS_TO_PASS)
    # The eval script put the test files back: the tree is base_commit again.
    assert git(testbed, "status", "--porcelain") == ""

    (tmp_path / "gold.diff").write_text(task.patch)
    git(testbed, "apply", str(tmp_path / "gold.diff"))
    _run_eval(task, testbed, tmp_path / "gold.log")
    gold = _grade(task, tmp_path / "gold.log", task.patch)
    assert gold["report"]["resolved"], json.dumps(gold["report"], indent=1)
    # Exactly the listed tests ran: nothing in the test files is left out of F2P/P2P.
    assert gold["ran"] == set(task.FAIL_TO_PASS) | set(task.PASS_TO_PASS)
