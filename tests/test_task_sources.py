"""Task sets as published: fixture rows in each published schema load, classic and SWE-smith rows verify on the
local backend, `tasks import` names every refused row, hub datasets load by split and revision (a local copy of
a dataset repository stands in for the hub, which this machine cannot reach) and the lineage records both."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from protege.cli import main
from protege.config import TaskSetConfig, load_config
from protege.patches import reversed_patch
from protege.task_schemas import (
    EvalCommands,
    classic_eval_lines,
    detect_schema,
    smith_eval_lines,
)
from protege.tasksets import (
    TaskSet,
    TaskSetError,
    TaskSetOrigin,
    import_task_set,
    load_task_set,
    log_task_set,
    select_tasks,
    task_set_digest,
)

PUBLISHED = Path(__file__).parent / "fixtures" / "published"
FIXTURES = {
    "swebench5.jsonl": "swebench5",
    "swebench_classic.jsonl": "swebench",
    "swe_gym.jsonl": "swebench",
    "swe_smith.jsonl": "swe-smith",
    "task_repo": "swebench5",  # swebench 5.x's own task-repo layout (tasks/<id>/task.yaml, eval.sh, ...)
}
CSVCOLS_BASE = "c0b8af9194e2206859c47143b8520ec46eb9dc26"


def rows_of(name: str) -> list[dict]:
    if (PUBLISHED / name).is_dir():
        from swebench.task.repo import load_task_repo

        return load_task_repo(PUBLISHED / name)
    return [json.loads(line) for line in (PUBLISHED / name).read_text().splitlines()]


def git(repo: Path, *args: str) -> str:
    ident = ["-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    done = subprocess.run(["git", *ident, "-C", str(repo), *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_a_reversed_patch_undoes_the_patch_with_git(tmp_path):
    """A created and a deleted file, a file without a final newline and a removed line starting with `--`."""
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q")
    files = {"x.py": "a\nb\nc\n-- d\ne\n", "gone.txt": "keep\n", "nn.txt": "no newline"}
    for name, text in files.items():
        (repo / name).write_text(text)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "base")
    (repo / "x.py").write_text("a\nB\nc\ne\nf\n")
    (repo / "gone.txt").unlink()
    (repo / "added.py").write_text("new\n")
    (repo / "nn.txt").write_text("no newline, changed")
    git(repo, "add", "-A")
    forward = git(repo, "diff", "--cached") + "\n"
    git(repo, "commit", "-qm", "change")
    backward = reversed_patch(forward)
    assert reversed_patch(backward) == forward
    subprocess.run(["git", "-C", str(repo), "apply", "-"], input=backward, text=True, check=True)
    assert {name: (repo / name).read_text() for name in files} == files and not (repo / "added.py").exists()


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_rows_in_each_published_schema_load_and_validate(name, capsys):
    rows = rows_of(name)
    assert {detect_schema(r) for r in rows} == {FIXTURES[name]}
    tasks = load_task_set(str(PUBLISHED / name))
    assert [t.instance_id for t in tasks] == [r["instance_id"] for r in rows]
    for task in tasks:
        assert ">>>>> Start Test Output" in task.eval_script and ">>>>> End Test Output" in task.eval_script
    assert main(["tasks", "validate", str(PUBLISHED / name)]) == 0
    assert f"{len(rows)} valid task instance(s)" in capsys.readouterr().out


def test_published_columns_are_kept_or_derived():
    five = {t.instance_id: t for t in load_task_set(str(PUBLISHED / "swebench5.jsonl"))}
    chart = five["chartjs__Chart.js-11116"]
    assert (chart.log_parser, chart.eval_type) == ("parse_log_karma", "fail_only")
    assert chart.eval_script == rows_of("swebench5.jsonl")[1]["eval_script"]  # a 5.x row's script is its own
    smith_row = rows_of("swe_smith.jsonl")[0]
    (smith, _) = load_task_set(str(PUBLISHED / "swe_smith.jsonl"))
    assert smith.base_commit == smith.instance_id  # SWE-smith's bug branch
    assert (
        smith.patch == reversed_patch(smith_row["patch"])
        and reversed_patch(smith.patch) == smith_row["patch"]
    )
    assert smith.image == smith_row["image_name"] and smith.test_patch == ""
    # the bug commit's parent is the fix: its sandbox keeps base_commit alone; real repositories keep theirs
    assert smith.history == "none" and chart.history == "full" and "history" not in chart.to_swebench()
    # only the FAIL_TO_PASS files run: PASS_TO_PASS keeps the tests in them
    assert smith.PASS_TO_PASS == ["tests/test_ssm/test_ssm_utils.py::test_convert_to_params"]
    gym = load_task_set(str(PUBLISHED / "swe_gym.jsonl"))[1]
    command = gym.eval_script.split(": '>>>>> Start Test Output'\n")[1].splitlines()[0]
    assert command.endswith(" pandas/tests/strings/test_strings.py")  # the .csv the test patch adds is data


CSVCOLS_EXPECTED_HEAD = f"""#!/bin/bash
set -uxo pipefail
cd /testbed
git checkout {CSVCOLS_BASE} tests/test_table.py
git apply -v - <<'EOF_"""
CSVCOLS_EXPECTED_TAIL = f"""
: '>>>>> Start Test Output'
python -m pytest -rA -p no:cacheprovider tests/test_table.py
: '>>>>> End Test Output'
git checkout {CSVCOLS_BASE} tests/test_table.py
"""


@pytest.mark.parametrize("name", ["swebench_classic.jsonl", "swe_gym.jsonl", "swe_smith.jsonl"])
def test_derived_eval_scripts_are_byte_identical_to_swebench_own_rendering(name):
    """swebench 5.0.2 has no classic-row script function (5.0.0 moved it out); what it has is used and checked:
    its TestSpec renders our command list byte for byte, its make_test_spec reads every command back and
    records the test exit code at our end marker, and the reset files and heredoc delimiter are its own."""
    from swebench.harness.utils import make_test_spec
    from swebench.types import TestSpec
    from swebench.utils import generate_heredoc_delimiter, get_modified_files

    for row, task in zip(rows_of(name), load_task_set(str(PUBLISHED / name)), strict=True):
        if name == "swe_smith.jsonl":
            lines = smith_eval_lines(row["FAIL_TO_PASS"], EvalCommands())
        else:
            lines = classic_eval_lines(row["base_commit"], row["test_patch"], EvalCommands())
            delimiter = generate_heredoc_delimiter(row["test_patch"].removesuffix("\n"))
            assert f"git apply -v - <<'{delimiter}'" in task.eval_script
            reset = f"git checkout {row['base_commit']} {' '.join(get_modified_files(row['test_patch']))}"
            assert task.eval_script.count(reset + "\n") == 2
        rendered = TestSpec(task.instance_id, task.image, lines, task.repo, task.version, [], []).eval_script
        assert task.eval_script == rendered
        # What swebench's harness runs for the row is our script, byte for byte, plus its exit-code capture at
        # our end marker (so a log claiming no failures while the tests failed is still caught).
        end = ": '>>>>> End Test Output'\n"
        recorded = (
            "SWEBENCH_TEST_EXIT_CODE=$?\n" + end + 'echo ">>>>> Test Exit Code: $SWEBENCH_TEST_EXIT_CODE"\n'
        )
        assert make_test_spec(task.to_swebench()).eval_script == task.eval_script.replace(end, recorded, 1)
    csvcols = load_task_set(str(PUBLISHED / "swebench_classic.jsonl"))[0]
    assert csvcols.eval_script.startswith(CSVCOLS_EXPECTED_HEAD)
    assert csvcols.eval_script.endswith(CSVCOLS_EXPECTED_TAIL)


def test_classic_rows_verify_on_the_local_backend(tmp_path, capsys):
    """The case that died with `GradingError: eval_script is empty`: classic rows now verify."""
    from protege.demo import build_demo_repos

    repos = tmp_path / "repos"
    build_demo_repos(repos, only=["protege-demo/csvcols", "protege-demo/iniconf"])
    source = str(PUBLISHED / "swebench_classic.jsonl")
    code = main(
        ["tasks", "verify", source, "--profile", "local", f"tasks.repos_dir={repos}", "--workers", "2"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "verifying 2 instance(s)" in out and "2/2 instance(s) ok" in out, out


def smith_mirror(repos: Path, mirror: str, instance_id: str) -> dict:
    """A SWE-smith-style mirror of the demo's csvcols: the fixed code with its tests on `main`, and a branch
    named like the instance with the bug applied; returns the row in SWE-smith's published columns."""
    from protege.demo import build_demo_repos, demo_tasks

    (task,) = [t for t in demo_tasks("all") if t.instance_id == "protege-demo__csvcols-1"]
    build_demo_repos(repos, only=[task.repo])
    clone = repos / mirror.replace("/", "__")
    subprocess.run(["git", "clone", "-q", str(repos / task.repo_dirname), str(clone)], check=True)
    git(clone, "checkout", "-q", "-B", "main", task.base_commit)
    for patch in (task.patch, task.test_patch):
        subprocess.run(["git", "-C", str(clone), "apply", "-"], input=patch, text=True, check=True)
    git(clone, "commit", "-qam", "fixed, with its tests")
    bug = reversed_patch(task.patch)  # SWE-smith's patch breaks clean code: here it puts the demo's bug back
    git(clone, "checkout", "-q", "-b", instance_id)
    subprocess.run(["git", "-C", str(clone), "apply", "-"], input=bug, text=True, check=True)
    git(clone, "commit", "-qam", "Bug Patch")
    git(clone, "checkout", "-q", "main")
    return {
        "instance_id": instance_id,
        "patch": bug,
        "FAIL_TO_PASS": task.FAIL_TO_PASS,
        "PASS_TO_PASS": [*task.PASS_TO_PASS, "tests/test_other.py::test_never_run"],
        "image_name": f"swebench/swesmith.x86_64.{mirror.split('/')[1]}",
        "repo": mirror,
        "problem_statement": task.problem_statement,
    }


def test_a_swe_smith_row_verifies_on_its_bug_branch(tmp_path, capsys):
    repos = tmp_path / "repos"
    row = smith_mirror(
        repos, "swesmith/protege-demo__csvcols.c0b8af91", "protege-demo__csvcols.c0b8af91.bug_1"
    )
    source = tmp_path / "smith.jsonl"
    source.write_text(json.dumps(row) + "\n")
    code = main(["tasks", "verify", str(source), "--profile", "local", f"tasks.repos_dir={repos}"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "protege-demo__csvcols.c0b8af91.bug_1: gold resolved" in out and "1/1 instance(s) ok" in out, out


def test_tasks_import_writes_the_local_form_and_names_each_refused_row(tmp_path, capsys):
    data_only = rows_of("swebench_classic.jsonl")[0] | {"instance_id": "acme__data-1"}
    data_only["test_patch"] = (
        "diff --git a/tests/data.json b/tests/data.json\n--- a/tests/data.json\n+++ b/tests/data.json\n"
        "@@ -1 +1 @@\n-{}\n+[]\n"
    )
    no_test_patch = {k: v for k, v in rows_of("swe_gym.jsonl")[0].items() if k != "test_patch"}
    no_test_patch["instance_id"] = "acme__nopatch-1"
    untitled = rows_of("swe_smith.jsonl")[1] | {"instance_id": "acme__smith.1.x", "problem_statement": ""}
    odd = {"instance_id": "acme__odd-1", "repo": "acme/odd"}
    rows = [*rows_of("swebench_classic.jsonl"), data_only, *rows_of("swe_smith.jsonl"), no_test_patch, odd]
    rows += [untitled, rows_of("swe_gym.jsonl")[0]]
    source = tmp_path / "mixed.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out" / "tasks.jsonl"

    assert main(["tasks", "import", str(source), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert f"wrote 5 row(s) to {out}, refused 4" in captured.out
    refused = [line for line in captured.err.splitlines() if line.startswith("refused ")]
    assert refused == [
        f"refused {source}:3 [acme__data-1]: test_patch: touches no test file (only data files); nothing to run",
        f"refused {source}:6 [acme__nopatch-1]: eval_script: missing, and no test_patch to derive it from",
        f"refused {source}:7 [acme__odd-1]: (row): no eval_script, test_patch or image_name column: not a "
        "swebench 5.x, SWE-bench/SWE-Gym or SWE-smith row",
        f"refused {source}:8 [acme__smith.1.x]: problem_statement: String should have at least 1 character",
    ]
    imported = load_task_set(str(out))
    assert len(imported) == 5 and all(
        json.loads(line)["eval_script"] for line in out.read_text().splitlines()
    )
    again = tmp_path / "again.jsonl"
    assert main(["tasks", "import", str(out), "--out", str(again)]) == 0  # the local form imports as itself
    assert task_set_digest(load_task_set(str(again))) == task_set_digest(imported)
    with pytest.raises(TaskSetError, match="eval_script: missing, and no test_patch to derive it from"):
        load_task_set(str(source))  # a load is all or nothing; import is the forgiving path


def test_import_from_s3_is_as_forgiving_as_from_a_file(tmp_path, store):
    rows = [*rows_of("swe_smith.jsonl"), {"instance_id": "acme__odd-1", "repo": "acme/odd"}]
    source = tmp_path / "smith.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    uri = store.uri(f"sets/{uuid.uuid4().hex[:8]}/smith.jsonl")
    store.upload_file(source, uri)
    report = import_task_set(uri, tmp_path / "out.jsonl", store=store)
    assert (report.written, [p.instance_id for p in report.refused], report.origin.source) == (
        2,
        ["acme__odd-1"],
        uri,
    )


def hub_copy(root: Path, rows: list[dict], split: str = "train") -> Path:
    """A local copy of a hub dataset repository: README, data/<split>-*.parquet, under git."""
    import datasets

    root.mkdir(parents=True)
    (root / "data").mkdir()
    datasets.Dataset.from_list(rows).to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    (root / "README.md").write_text("---\nlicense: mit\n---\nSWE-Gym-shaped rows\n")
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-qm", "Upload dataset")
    return root


def test_a_hub_dataset_copy_loads_by_split_and_revision_independently_of_eval(tmp_path):
    gym = hub_copy(tmp_path / "SWE-Gym", rows_of("swe_gym.jsonl"))
    tasks = load_task_set(str(gym))
    assert len(tasks) == 2
    assert tasks.origin == TaskSetOrigin(str(gym), "train", git(gym, "rev-parse", "HEAD"))
    with pytest.raises(TaskSetError, match=r"no split 'test' \(it has: train\)"):
        load_task_set(str(gym), split="test")
    cfg = TaskSetConfig(train=str(gym), eval=str(PUBLISHED / "swebench5.jsonl"), train_split="train")
    selection = select_tasks(cfg)
    assert (len(selection.train), len(selection.eval)) == (2, 2)
    assert selection.train.origin.split == "train" and selection.eval.origin.split == ""


def test_hub_ids_are_refused_offline_in_one_line_and_pinned_online(tmp_path, monkeypatch):
    import huggingface_hub
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # what the local profile's runner sets
    with pytest.raises(TaskSetError) as err:
        load_task_set("SWE-Gym/SWE-Gym")
    assert "\n" not in str(err.value) and "offline (HF_HUB_OFFLINE=1" in str(err.value)

    # Online: only the hub's answer to "which commit is this revision" is stood in for; the rows come from a
    # copy of the dataset repository at the same id, read by the same datasets.load_dataset call.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    asked = []

    def dataset_info(self, repo_id, revision=None, **kwargs):
        asked.append((repo_id, revision))
        return SimpleNamespace(sha="5e1c0ffee" * 4 + "abcd")

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", dataset_info)
    hub_copy(tmp_path / "SWE-Gym" / "SWE-Gym", rows_of("swe_gym.jsonl"))
    monkeypatch.chdir(tmp_path)
    tasks = load_task_set("SWE-Gym/SWE-Gym@v1:train")
    assert asked == [("SWE-Gym/SWE-Gym", "v1")]
    assert tasks.origin == TaskSetOrigin("hf://SWE-Gym/SWE-Gym", "train", "5e1c0ffee" * 4 + "abcd")


def test_hub_access_is_offline_only_in_the_local_profile_runner():
    from protege.pipeline.local import STEP_ENV
    from tests.test_images import DOCKERFILES, instructions

    assert STEP_ENV["HF_HUB_OFFLINE"] == "1"  # the local run: no hub
    assert "export HF_HUB_OFFLINE := 1" in (Path(__file__).parents[1] / "Makefile").read_text()
    for path in DOCKERFILES:  # the images the cluster runs: the hub is reachable
        env = " ".join(args for op, args in instructions(path) if op == "ENV")
        assert "HF_HUB_OFFLINE=1" not in env, path.name


def test_the_lineage_records_split_and_revision_beside_the_digest(mlflow_server):
    from protege.config import TrackingConfig
    from protege.tracking import Tracker

    suffix = uuid.uuid4().hex[:8]
    tracker = Tracker(mlflow_server.tracking_config(TrackingConfig(experiment=f"sources-{suffix}")))
    tracker.start_pipeline(f"sources-{suffix}", load_config("local"))
    origin = TaskSetOrigin("hf://SWE-Gym/SWE-Gym", "train", "f" * 40)  # what a hub load records
    tasks = TaskSet(load_task_set(str(PUBLISHED / "swe_gym.jsonl")), origin)
    with tracker.phase("rl1") as phase:
        digest = log_task_set(tracker, phase.run_id, "train-tasks", "SWE-Gym/SWE-Gym", tasks, "training")
    run = tracker.get_run(phase.run_id)
    (entry,) = run.inputs.dataset_inputs
    tags = {tag.key: tag.value for tag in entry.tags}
    assert (tags["sha256"], tags["split"], tags["revision"]) == (digest, "train", "f" * 40)
    assert json.loads(entry.dataset.source) == {"uri": f"hf://SWE-Gym/SWE-Gym@{'f' * 40}:train"}
    tracker.end_pipeline()
