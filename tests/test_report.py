"""The report renders from a stored results directory: files, valid PNGs, figures equal to metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protege.config import LoopConfig
from protege.evaluate.metrics import summarize
from protege.evaluate.report import (
    GRADES,
    PREDICTIONS,
    RUN_INFO,
    TRAJECTORIES,
    ReportError,
    load_results,
    loop_curve,
    repo_of,
    write_report,
)
from protege.trajectory import Action, ExpertCall, Trajectory, append_trajectory

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PATCH = "diff --git a/x.py b/x.py\n--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a\n+b\n"


def _actions(base: str, count: int) -> list[Action]:
    return [Action(step=i, tool="bash", arguments={}, base_command=base) for i in range(1, count + 1)]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("a") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    """Three graded episodes over two repos (one resolved), plus one still pending."""
    episodes = [
        Trajectory(
            instance_id="acme__calc-1",
            status="submitted",
            patch=PATCH,
            actions=_actions("python", 3) + _actions("submit", 1),
            expert_calls=[ExpertCall(step=1, question="q", input_tokens=90, output_tokens=10, cost_usd=0.02)],
            policy_input_tokens=400,
            policy_output_tokens=100,
        ),
        Trajectory(
            instance_id="acme__calc-2", status="step_limit", patch=PATCH, actions=_actions("navigate", 12)
        ),
        Trajectory(instance_id="demo__strings-7", status="submitted", actions=_actions("submit", 1)),
        Trajectory(instance_id="demo__strings-8", status="submitted", actions=_actions("submit", 1)),
    ]
    for trajectory in episodes:
        append_trajectory(tmp_path / TRAJECTORIES, trajectory)
    _write_jsonl(
        tmp_path / GRADES,
        [
            {"instance_id": "acme__calc-1", "attempt": 0, "resolved": False, "reason": "tests_failed"},
            {
                "instance_id": "acme__calc-1",
                "attempt": 0,
                "resolved": True,
                "reason": "",
                "repo": "acme/calc",
            },
            {"instance_id": "acme__calc-2", "attempt": 0, "resolved": False, "reason": "tests_failed"},
            {"instance_id": "demo__strings-7", "attempt": 0, "resolved": False, "reason": "empty_patch"},
        ],
    )
    _write_jsonl(
        tmp_path / PREDICTIONS,
        [{"instance_id": t.instance_id, "model_name_or_path": "m", "model_patch": t.patch} for t in episodes],
    )
    (tmp_path / RUN_INFO).write_text(
        json.dumps({"model": "m", "confidence": 0.9, "loop_metric_lengths": [2, 10]})
    )
    return tmp_path


def test_report_files_exist_and_plots_are_pngs(results_dir):
    paths = write_report(results_dir)
    assert set(paths) == {
        "report_json",
        "report_md",
        "resolved_by_repo",
        "steps_histogram",
        "loop_curve",
        "expert_calls",
    }
    for name, path in paths.items():
        assert path.is_file() and path.stat().st_size > 0, name
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == PNG_SIGNATURE, name
    markdown = paths["report_md"].read_text()
    for name in ("resolved_by_repo", "steps_histogram", "loop_curve", "expert_calls"):
        assert f"(plots/{name}.png)" in markdown
    assert "| acme__calc-2 | 0 | no | step_limit | step_limit | 12 | 12 | 0 |" in markdown
    assert "1 episode(s) not graded yet" in markdown


def test_report_figures_equal_metrics_with_the_runs_settings(results_dir):
    report = json.loads(write_report(results_dir)["report_json"].read_text())
    results = load_results(results_dir)
    expected = summarize(results.episodes, 0.9, LoopConfig(metric_lengths=[2, 10]))
    assert report["summary"] == json.loads(json.dumps(expected))
    assert report["summary"]["pass_at_1"] == pytest.approx(1 / 3)
    assert report["summary"]["confidence"] == 0.9
    assert report["summary"]["loop_rate_gt_2"] == pytest.approx(2 / 3)
    assert report["summary"]["loop_rate_gt_10"] == pytest.approx(1 / 3)
    assert report["summary"]["failures"]["no_submission"] == 1
    assert report["summary"]["failures"]["step_limit"] == 1
    assert report["pending"] == [{"instance_id": "demo__strings-8", "attempt": 0}]
    assert report["run"]["model"] == "m"


def test_explicit_settings_override_the_run_file(results_dir):
    report_json = write_report(results_dir, confidence=0.95, loop=LoopConfig(metric_lengths=[40]))[
        "report_json"
    ]
    summary = json.loads(report_json.read_text())["summary"]
    assert summary["confidence"] == 0.95 and "loop_rate_gt_40" in summary and "loop_rate_gt_2" not in summary


def test_rows_carry_the_latest_grade_and_the_repo(results_dir):
    rows = json.loads(write_report(results_dir)["report_json"].read_text())["instances"]
    by_id = {row["instance_id"]: row for row in rows}
    assert by_id["acme__calc-1"]["resolved"] is True  # the later grading row wins
    assert by_id["acme__calc-1"]["repo"] == "acme/calc"
    assert by_id["demo__strings-7"]["repo"] == "demo/strings"  # from the id convention
    assert by_id["acme__calc-1"]["total_tokens"] == 600
    assert by_id["acme__calc-1"]["expert_cost_usd"] == pytest.approx(0.02)


def test_grade_without_trajectory_is_named(results_dir):
    _write_jsonl(results_dir / GRADES, [{"instance_id": "ghost__x-1", "attempt": 2, "resolved": False}])
    with pytest.raises(ReportError, match=r"ghost__x-1 \(attempt 2\)"):
        write_report(results_dir)


def test_bad_grades_line_names_file_and_line(results_dir):
    with (results_dir / GRADES).open("a") as handle:
        handle.write("{not json\n")
    with pytest.raises(ReportError, match=r"grades.jsonl:5: not valid JSON"):
        write_report(results_dir)


def test_nothing_graded_is_an_error(tmp_path):
    with pytest.raises(ReportError, match="no graded episodes"):
        write_report(tmp_path)


def test_loop_curve_and_repo_of():
    rows = [{"longest_loop": 3}, {"longest_loop": 1}]
    assert loop_curve(rows) == [(1, 0.5), (2, 0.5), (3, 0.0)]
    assert loop_curve([{"longest_loop": 0}]) == [(1, 0.0)]
    assert repo_of("django__django-11099") == "django/django"
    assert repo_of("owner__my-repo-12") == "owner/my-repo"
    assert repo_of("plain") == "plain"
