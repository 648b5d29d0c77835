"""Task sets: every source form loads, every bad row is named, selection is deterministic."""

import json
from pathlib import Path

import pytest

from protege.cli import main
from protege.config import TaskSetConfig
from protege.tasks import TaskInstance
from protege.tasksets import TaskSetError, load_task_set, select_tasks, split_tasks, task_set_digest

DIFF = "diff --git a/m.py b/m.py\n--- a/m.py\n+++ b/m.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n"


def row(instance_id: str, repo: str = "acme/lib", **extra) -> dict:
    base = {
        "instance_id": instance_id,
        "repo": repo,
        "base_commit": "0123456789abcdef0123456789abcdef01234567",
        "problem_statement": "x should be 2",
        "patch": DIFF,
        "test_patch": DIFF.replace("m.py", "test_m.py"),
        "FAIL_TO_PASS": json.dumps(["test_m.py::test_x"]),
        "PASS_TO_PASS": json.dumps(["test_m.py::test_y"]),
        "version": "1.0",
    }
    base.update(extra)
    return base


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_jsonl_json_parquet_and_saved_dataset_agree(tmp_path):
    import datasets

    rows = [row("acme__lib-1"), row("acme__lib-2", FAIL_TO_PASS=["a::b"])]
    jsonl = write_jsonl(tmp_path / "t.jsonl", rows)
    as_json = tmp_path / "t.json"
    as_json.write_text(json.dumps(rows))
    as_parquet = tmp_path / "t.parquet"
    flat = [
        {
            **r,
            "FAIL_TO_PASS": json.dumps(r["FAIL_TO_PASS"])
            if isinstance(r["FAIL_TO_PASS"], list)
            else r["FAIL_TO_PASS"],
        }
        for r in rows
    ]
    datasets.Dataset.from_list(flat).to_parquet(str(as_parquet))
    datasets.Dataset.from_list(flat).save_to_disk(str(tmp_path / "saved"))

    loaded = [load_task_set(str(p)) for p in (jsonl, as_json, as_parquet, tmp_path / "saved")]
    digests = {task_set_digest(tasks) for tasks in loaded}
    assert len(digests) == 1
    assert loaded[0][1].FAIL_TO_PASS == ["a::b"]


def test_swebench_task_repo_directory(tmp_path):
    import yaml

    task_dir = tmp_path / "tasks" / "acme__lib-1"
    task_dir.mkdir(parents=True)
    r = row("acme__lib-1")
    (task_dir / "task.yaml").write_text(
        yaml.safe_dump({k: r[k] for k in ("instance_id", "repo", "base_commit", "version")})
    )
    (task_dir / "tests.json").write_text(json.dumps({"FAIL_TO_PASS": ["t::a"], "PASS_TO_PASS": ["t::b"]}))
    (task_dir / "gold.patch").write_text(r["patch"])
    (task_dir / "test.patch").write_text(r["test_patch"])
    (task_dir / "eval.sh").write_text("#!/bin/bash\n")
    (task_dir / "problem_statement.md").write_text("it breaks")
    (task,) = load_task_set(str(tmp_path))
    assert (task.instance_id, task.FAIL_TO_PASS, task.problem_statement) == (
        "acme__lib-1",
        ["t::a"],
        "it breaks",
    )


def test_malformed_jsonl_names_every_bad_instance_and_field(tmp_path, capsys):
    missing = row("acme__lib-2")
    del missing["base_commit"]
    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            row("acme__lib-1"),
            '{"instance_id": "acme__lib-9", "repo": ',
            missing,
            row("acme__lib-3", FAIL_TO_PASS="test_m.py::test_x"),
            row("acme__lib-1"),
            row("acme__lib-4", patch="just words, no diff"),
        ],
    )
    with pytest.raises(TaskSetError) as err:
        load_task_set(str(bad))
    text = str(err.value)
    assert f"{bad}:2" in text and "not valid JSON" in text
    assert f"{bad}:3 [acme__lib-2]: base_commit: missing required field" in text
    assert f"{bad}:4 [acme__lib-3]: FAIL_TO_PASS:" in text and "JSON list" in text
    assert f"{bad}:5 [acme__lib-1]: instance_id: duplicate instance_id (first at {bad}:1)" in text
    assert f"{bad}:6 [acme__lib-4]: patch: is not a unified diff" in text
    assert len(err.value.problems) == 5

    assert main(["tasks", "validate", str(bad)]) == 1
    assert "acme__lib-3" in capsys.readouterr().err


def test_cli_validate_and_list_valid_set(tmp_path, capsys):
    good = write_jsonl(tmp_path / "good.jsonl", [row("acme__lib-1"), row("acme__lib-2", repo="acme/other")])
    assert main(["tasks", "validate", str(good)]) == 0
    assert "2 valid task instance(s) from 2 repo(s)" in capsys.readouterr().out
    assert main(["tasks", "list", str(good)]) == 0
    assert "acme__lib-2" in capsys.readouterr().out


def test_unknown_format_and_missing_path_are_clear(tmp_path):
    (tmp_path / "t.csv").write_text("a,b\n")
    with pytest.raises(TaskSetError, match="unknown task-set format"):
        load_task_set(str(tmp_path / "t.csv"))
    with pytest.raises(TaskSetError, match="no such file"):
        load_task_set(str(tmp_path / "nope.jsonl"))


def test_split_is_deterministic_and_disjoint():
    tasks = [TaskInstance.model_validate(row(f"acme__lib-{i}")) for i in range(20)]
    train_a, eval_a = split_tasks(tasks, 0.25, seed=7)
    train_b, eval_b = split_tasks(list(reversed(tasks)), 0.25, seed=7)
    assert {t.instance_id for t in eval_a} == {t.instance_id for t in eval_b}
    assert len(eval_a) == 5 and not {t.instance_id for t in train_a} & {t.instance_id for t in eval_a}
    _, eval_c = split_tasks(tasks, 0.25, seed=8)
    assert {t.instance_id for t in eval_c} != {t.instance_id for t in eval_a}


def test_decontamination_and_id_selection(tmp_path):
    train = write_jsonl(
        tmp_path / "train.jsonl",
        [row("a__x-1", repo="a/x"), row("b__y-1", repo="b/y"), row("c__z-1", repo="c/z")],
    )
    evaluation = write_jsonl(tmp_path / "eval.jsonl", [row("b__y-9", repo="b/y")])
    sel = select_tasks(TaskSetConfig(train=str(train), eval=str(evaluation)))
    assert [t.instance_id for t in sel.train] == ["a__x-1", "c__z-1"]
    assert "decontamination" in sel.dropped["b__y-1"]
    kept = select_tasks(TaskSetConfig(train=str(train), eval=str(evaluation), decontaminate=False))
    assert len(kept.train) == 3
    picked = select_tasks(TaskSetConfig(train=str(train), eval=str(evaluation), train_ids=["c__z-1"]))
    assert [t.instance_id for t in picked.train] == ["c__z-1"]
    with pytest.raises(TaskSetError, match="not in the task set: q__q-1"):
        select_tasks(TaskSetConfig(train=str(train), eval=str(evaluation), train_ids=["q__q-1"]))


def test_max_eval_caps_the_eval_split_reproducibly(tmp_path):
    evaluation = write_jsonl(tmp_path / "eval.jsonl", [row(f"e__v-{i}", repo="e/v") for i in range(10)])
    train = write_jsonl(tmp_path / "train.jsonl", [row("a__x-1", repo="a/x")])
    capped = [
        select_tasks(TaskSetConfig(train=str(train), eval=str(evaluation), max_eval=4, split_seed=seed))
        for seed in (0, 0, 1)
    ]
    ids = [[t.instance_id for t in sel.eval] for sel in capped]
    assert len(ids[0]) == 4 and ids[0] == ids[1] and set(ids[0]) != set(ids[2])
    assert len(select_tasks(TaskSetConfig(train=str(train), eval=str(evaluation))).eval) == 10


def test_s3_uri_file_and_tree(tmp_path, store):
    jsonl = write_jsonl(tmp_path / "t.jsonl", [row("acme__lib-1"), row("acme__lib-2")])
    store.upload_file(jsonl, store.uri("sets/t.jsonl"))
    tasks = load_task_set(store.uri("sets/t.jsonl"), store=store)
    assert [t.instance_id for t in tasks] == ["acme__lib-1", "acme__lib-2"]

    import datasets

    datasets.Dataset.from_list([row("acme__lib-3")]).save_to_disk(str(tmp_path / "saved"))
    store.upload_dir(tmp_path / "saved", store.uri("sets/saved"))
    assert [t.instance_id for t in load_task_set(store.uri("sets/saved"), store=store)] == ["acme__lib-3"]


def test_ensure_local_repos_builds_demo_repos_and_names_missing_ones(tmp_path):
    from protege.tasksets import ensure_local_repos

    demo = load_task_set("demo:eval")
    ensure_local_repos(demo, "demo:eval", tmp_path / "repos")
    assert all((tmp_path / "repos" / t.repo_dirname / ".git").is_dir() for t in demo)

    tasks = [TaskInstance.model_validate(row("acme__lib-1"))]
    with pytest.raises(ValueError, match=r"mine.jsonl: repositories missing under .*repos: acme__lib"):
        ensure_local_repos(tasks, "mine.jsonl", tmp_path / "repos", error=ValueError)
    (tmp_path / "repos" / "acme__lib").mkdir()
    ensure_local_repos(tasks, "mine.jsonl", tmp_path / "repos", error=ValueError)
