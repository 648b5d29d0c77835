"""What a reviewer sees in MLflow, against the real local server: the pipeline run carries the headline
figures, the task sets and the SFT dataset as inputs and links to every model; every eval episode is a
trace with one span per step and its expert call as an LLM span with tokens and cost; the registered
version is rl2's own LoggedModel; a trace logged while MLflow is down arrives once it is back."""

from __future__ import annotations

import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from protege import register, rl, sft
from protege.agent.policies import ScriptedPolicy
from protege.config import TrackingConfig, load_config
from protege.evaluate import GOLD_HEREDOC, run
from protege.tasksets import log_task_set, select_tasks
from protege.tracking import Tracker
from protege.tracking.traces import SPAN_AGENT, SPAN_LLM, SPAN_TOOL, episode_trace
from protege.trajectory import Action, ExpertCall, Message, Trajectory
from tests.agent.anthropic_mock import MockLLMServer, anthropic_text

KEY = "test-key"
IN_TOKENS, OUT_TOKENS = 1200, 300
COST = (IN_TOKENS * 3.0 + OUT_TOKENS * 15.0) / 1_000_000  # the config's default Anthropic prices
HEADLINE = (
    "pass_at_1",
    "pass_at_1_ci_low",
    "pass_at_1_ci_high",
    "expert_calls_per_task",
    "expert_token_share",
    "median_total_cost_per_task",
    "median_expert_cost_per_task",
    "steps_per_task",
    "loop_rate_gt_10",
)


def ask_then_fix(task) -> ScriptedPolicy:
    """Look, ask the expert, apply the gold patch, submit: 4 steps, one expert call, resolved."""
    patch = task.patch.rstrip("\n") + "\n"
    turns = [
        {"tool": "bash", "arguments": {"command": "ls"}},
        {"tool": "ask_expert", "arguments": {"question": "Where is the bug?"}},
        {"tool": "bash", "arguments": {"command": f"git apply - <<'{GOLD_HEREDOC}'\n{patch}{GOLD_HEREDOC}"}},
        {"tool": "submit", "arguments": {}},
    ]
    return ScriptedPolicy(turns, model="script:ask-then-fix")


@pytest.fixture(scope="module")
def repos_dir(tmp_path_factory) -> Path:
    from protege.demo import build_demo_repos

    path = tmp_path_factory.mktemp("repos")
    build_demo_repos(path)
    return path


@pytest.fixture(scope="module")
def pipeline(mlflow_server, repos_dir, tmp_path_factory):
    """One pipeline run as its steps record it: sft and rl2 publish their final models through their own
    Lineage, rl logs the train set, eval runs the agent on the 4 demo eval tasks with an Anthropic expert
    (the local mock server), register versions rl2's model."""
    tmp = tmp_path_factory.mktemp("pipeline")
    suffix = uuid.uuid4().hex[:8]
    tracking = mlflow_server.tracking_config(
        TrackingConfig(experiment=f"review-{suffix}", registered_model=f"agent-{suffix}")
    )
    with MockLLMServer(api_key=KEY) as server:
        server.push(*(anthropic_text("Look at the bound.", IN_TOKENS, OUT_TOKENS) for _ in range(4)))
        overrides = [
            f"run_name=review-{suffix}",
            f"tasks.repos_dir={repos_dir}",
            "agent.policy.backend=scripted",
            "expert.backend=anthropic",
            "expert.model=claude-test",
            f"expert.base_url={server.url}",
            'expert.cache_mode="off"',
            f"expert.cache_dir={tmp / 'cache'}",
            "eval.workers=2",
        ]
        cfg = load_config("local", overrides=overrides).model_copy(update={"tracking": tracking})
        tracker = Tracker(cfg.tracking)
        parent = tracker.start_pipeline(cfg.run_name, cfg)
        with tracker.phase("sft") as phase:
            data = SimpleNamespace(digest="a" * 64, source="s3://protege/r/synth/dataset")
            sft.log_sft_dataset(tracker, phase.run_id, data)
            (tmp / "sft-model").mkdir()
            sft_model = sft.Lineage(cfg, data, None, tracker, phase.run_id).publish(
                tmp / "sft-model", sft.MODEL, 5, wait=True
            )
        with tracker.phase("rl2") as phase:
            rl2_run = phase.run_id
            train = select_tasks(cfg.tasks).train
            log_task_set(tracker, rl2_run, "train-tasks", cfg.tasks.train, train, "training")
            plan = SimpleNamespace(
                stage=2,
                phase="rl2",
                reference_uri=sft_model["uri"],
                parent_checkpoint_uri="",
                reward=cfg.rl.stage2,
            )
            flat = SimpleNamespace(state=lambda: {})
            (tmp / "rl2-model").mkdir()
            rl2_model = rl.Lineage(cfg, plan, flat, None, tracker, rl2_run).publish(
                tmp / "rl2-model", rl.MODEL, 3
            )
        import os

        os.environ["ANTHROPIC_API_KEY"] = KEY
        try:
            result = run(
                cfg,
                rl2_model["uri"],
                tmp / "eval",
                tracker,
                policy_for=lambda task, attempt: ask_then_fix(task),
                progress=lambda line: None,
            )
        finally:
            os.environ.pop("ANTHROPIC_API_KEY", None)
    lineage = {key: "" for key in register.LINEAGE_TAGS}
    registered = register.run(
        cfg, model_uri=rl2_model["uri"], eval_report=result, lineage=lineage, tracker=tracker
    )
    tracker.end_pipeline()
    return SimpleNamespace(
        cfg=cfg,
        tracker=tracker,
        parent=parent,
        eval=result,
        rl2_run=rl2_run,
        rl2_model=rl2_model,
        sft_model=sft_model,
        registered=registered,
    )


@pytest.mark.slow
def test_the_pipeline_run_carries_the_headline_figures_datasets_and_models(pipeline) -> None:
    parent = pipeline.tracker.get_run(pipeline.parent)
    eval_run = pipeline.tracker.get_run(pipeline.eval["mlflow_run_id"])
    metrics = parent.data.metrics
    assert set(HEADLINE) <= set(metrics), sorted(metrics)
    assert {key: metrics[key] for key in HEADLINE} == {key: eval_run.data.metrics[key] for key in HEADLINE}
    assert metrics["pass_at_1"] == 1.0 and metrics["expert_calls_per_task"] == 1.0
    assert metrics["median_expert_cost_per_task"] == pytest.approx(COST)
    assert metrics["expert_token_share"] == 1.0  # a scripted policy counts no tokens of its own
    assert not any("." in key for key in metrics)  # per-reason failure counts stay on the eval run
    inputs = {d.dataset.name: d for d in parent.inputs.dataset_inputs}
    assert set(inputs) == {"sft-dataset", "train-tasks", "eval-tasks"}
    assert inputs["sft-dataset"].dataset.digest == "a" * 32
    tags = {tag.key: tag.value for tag in inputs["eval-tasks"].tags}
    assert (
        len(tags["sha256"]) == 64 and tags["instances"] == "4" and tags["mlflow.data.context"] == "evaluation"
    )
    assert inputs["eval-tasks"].dataset.digest == tags["sha256"][:32]
    assert [d.dataset.name for d in eval_run.inputs.dataset_inputs] == ["eval-tasks"]
    assert parent.data.tags["protege.model.rl2.uri"] == pipeline.rl2_model["uri"]
    assert parent.data.tags["protege.model.rl2.model_id"] == pipeline.rl2_model["model_id"]
    assert parent.data.tags["protege.model.sft.model_id"] == pipeline.sft_model["model_id"]


@pytest.mark.slow
def test_every_eval_episode_is_a_trace_with_step_and_expert_spans(pipeline) -> None:
    tracker = pipeline.tracker
    traces = tracker.client.search_traces(
        locations=[tracker.experiment_id], run_id=pipeline.eval["mlflow_run_id"], max_results=100
    )
    assert len(traces) == pipeline.eval["summary"]["episodes"] == 4
    assert {t.info.tags["protege.instance_id"] for t in traces} == {
        t.instance_id for t in select_tasks(pipeline.cfg.tasks).eval
    }
    for trace in traces:
        spans = trace.data.spans
        (root,) = [s for s in spans if s.parent_id is None]
        tools = [s for s in spans if s.span_type == SPAN_TOOL]
        (expert,) = [s for s in spans if s.span_type == SPAN_LLM]
        assert root.span_type == SPAN_AGENT and root.outputs["resolved"] is True
        assert [s.name for s in tools] == [
            "step 1: bash",
            "step 2: ask_expert",
            "step 3: bash",
            "step 4: submit",
        ]
        assert all(s.parent_id == root.span_id for s in tools)
        assert expert.parent_id == tools[1].span_id
        assert expert.outputs == {"reply": "Look at the bound."}
        assert expert.get_attribute("mlflow.chat.tokenUsage") == {
            "input_tokens": IN_TOKENS,
            "output_tokens": OUT_TOKENS,
            "total_tokens": IN_TOKENS + OUT_TOKENS,
        }
        assert expert.get_attribute("protege.cost_usd") == pytest.approx(COST)
        assert expert.get_attribute("mlflow.llm.cost")["total_cost"] == pytest.approx(COST)
        assert expert.get_attribute("protege.expert.model") == "claude-test"
        assert all(root.start_time_ns <= s.start_time_ns <= s.end_time_ns <= root.end_time_ns for s in spans)


@pytest.mark.slow
def test_the_registered_version_is_rl2s_own_model(pipeline) -> None:
    tracker, registered = pipeline.tracker, pipeline.registered
    version = tracker.client.get_model_version(registered["name"], registered["version"])
    assert registered["model_id"] == pipeline.rl2_model["model_id"]
    assert version.source == f"models:/{pipeline.rl2_model['model_id']}"
    assert version.run_id == pipeline.rl2_run
    assert version.tags["protege.source_run_id"] == pipeline.rl2_run
    assert version.tags["protege.checkpoint_uri"] == pipeline.rl2_model["uri"]
    assert tracker.logged_models(registered["mlflow_run_id"]) == []  # register made no model of its own


def _episode() -> Trajectory:
    call = ExpertCall(
        step=1,
        question="why?",
        reply="because",
        backend="anthropic",
        model="m",
        input_tokens=10,
        output_tokens=5,
        cost_usd=0.001,
        latency_s=0.5,
    )
    return Trajectory(
        instance_id="acme__calc-1",
        phase="synth",
        status="submitted",
        started_at=1_700_000_000.0,
        wall_time_s=3.0,
        expert_calls=[call],
        actions=[
            Action(
                step=1,
                tool="ask_expert",
                arguments={"question": "why?"},
                base_command="ask_expert",
                duration_s=0.5,
            ),
            Action(step=2, tool="submit", arguments={}, base_command="submit", duration_s=0.1),
        ],
        messages=[
            Message(role="tool", provenance="expert", content="because", name="ask_expert"),
            Message(role="tool", provenance="tool", content="x" * 5000, name="submit"),
        ],
    )


def test_an_episode_spec_places_steps_in_time_and_cuts_long_values() -> None:
    spec = episode_trace(_episode(), max_chars=100, step="7")
    assert spec["tags"]["step"] == "7" and spec["end_ns"] - spec["start_ns"] == 3_000_000_000
    ask, expert, submit = spec["spans"]
    assert (ask["type"], expert["type"], submit["type"]) == (SPAN_TOOL, SPAN_LLM, SPAN_TOOL)
    assert expert["parent"] == 0 and ask["parent"] is None
    assert ask["end_ns"] - ask["start_ns"] == 500_000_000 and ask["end_ns"] <= submit["start_ns"]
    assert len(submit["outputs"]["observation"]) == 100
    assert submit["outputs"]["observation"].endswith("...[truncated]")


@pytest.mark.slow
def test_a_trace_logged_while_mlflow_is_down_arrives_when_it_is_back(mlflow_server, tmp_path) -> None:
    fields = {
        "experiment": f"down-{uuid.uuid4().hex[:8]}",
        "request_max_retries": 0,
        "request_timeout_s": 5,
        "retry_backoff_s": 0.2,
        "retry_backoff_max_s": 2.0,
        "spool_dir": str(tmp_path),
    }
    tracker = Tracker(mlflow_server.tracking_config(TrackingConfig(**fields)))
    run_id = tracker.start_pipeline("down")
    mlflow_server.stop("mlflow")
    try:
        assert tracker.log_trace(run_id, episode_trace(_episode())) is None  # buffered, never raised
        assert tracker.pending == 1 and list(tmp_path.glob("*.pkl"))
    finally:
        mlflow_server.start_mlflow()
    tracker.flush()
    (trace,) = tracker.client.search_traces(locations=[tracker.experiment_id], run_id=run_id)
    assert trace.info.tags["protege.instance_id"] == "acme__calc-1"
    assert sorted(s.span_type for s in trace.data.spans) == sorted(
        [SPAN_AGENT, SPAN_TOOL, SPAN_LLM, SPAN_TOOL]
    )
