"""The KFP pipeline: compiled placement (GPU, pools, secrets, caching, retries, timeouts), the committed
YAML's freshness, the requests `protege submit`/`schedule` send, and one component under kfp.local."""

from __future__ import annotations

import argparse
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from protege.cli import main
from protege.config import ConfigError, PipelineConfig
from protege.pipeline import compile as kfp_cli
from protege.pipeline import steps as kfp_steps
from protege.pipeline.placement import GpuPool, PlacementError, place

CHAIN = ["verify-tasks", "synth", "sft", "rl1", "rl2", "eval", "register"]
GPU_TASKS = {"sft", "rl1", "rl2", "eval"}
CPU_TASKS = set(CHAIN) - GPU_TASKS
STEP_OF = {"verify-tasks": "verify"} | {name: name for name in CHAIN[1:]}
S3_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
MLFLOW_ENV = {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
EXPECTED_SECRET_ENV = {
    "verify-tasks": S3_ENV,
    "synth": {"ANTHROPIC_API_KEY"} | S3_ENV | MLFLOW_ENV,
    "sft": S3_ENV | MLFLOW_ENV,
    "rl1": {"ANTHROPIC_API_KEY"} | S3_ENV | MLFLOW_ENV,
    "rl2": {"ANTHROPIC_API_KEY"} | S3_ENV | MLFLOW_ENV,
    "eval": {"ANTHROPIC_API_KEY"} | S3_ENV | MLFLOW_ENV,
    "register": S3_ENV | MLFLOW_ENV,
}


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = kfp_cli.compile_pipeline(tmp_path_factory.mktemp("kfp") / "pipeline.yaml")
    docs = list(yaml.safe_load_all(path.read_text()))
    return {
        "pipeline": docs[0],
        "platform": docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"],
    }


def _tasks(spec: dict[str, Any]) -> dict[str, Any]:
    """The steps: every one runs inside the exit handler's group."""
    return spec["pipeline"]["components"]["comp-exit-handler-1"]["dag"]["tasks"]


def _root_param(spec: dict[str, Any], channel: str) -> str:
    """The pipeline parameter a step's input channel comes from, through the exit handler's group."""
    group = spec["pipeline"]["root"]["dag"]["tasks"]["exit-handler-1"]["inputs"]["parameters"]
    return group[channel]["componentInputParameter"]


def _container(spec: dict[str, Any], task: str) -> dict[str, Any]:
    return spec["pipeline"]["deploymentSpec"]["executors"][f"exec-{task}"]["container"]


def test_tasks_chain_in_the_order_of_the_method(spec: dict[str, Any]) -> None:
    tasks = _tasks(spec)
    assert set(tasks) == set(CHAIN) | {BRANCHES}
    for before, after in zip(CHAIN, CHAIN[1:], strict=False):
        assert before in tasks[after]["dependentTasks"], f"{after} must wait for {before}"


BRANCHES = "condition-branches-2"
"""The baselines branch's If/Else group between eval and register (issue 19)."""


def test_the_baselines_branch_runs_behind_its_parameter_between_eval_and_register(
    spec: dict[str, Any],
) -> None:
    components, tasks = spec["pipeline"]["components"], _tasks(spec)
    params = spec["pipeline"]["root"]["inputDefinitions"]["parameters"]
    assert params["compare_baselines"] == {
        "defaultValue": False,
        "isOptional": True,
        "parameterType": "BOOLEAN",
    }
    assert (
        "expert-alone" in params["baselines"]["defaultValue"]
        and params["baselines"]["parameterType"] == "LIST"
    )
    assert "eval" in tasks[BRANCHES]["dependentTasks"]
    branches = components[f"comp-{BRANCHES}"]["dag"]["tasks"]
    on, off = (branches[name] for name in sorted(branches))
    # On: a condition on the parameter; inside, a parallel loop of `baseline` tasks over `baselines`, then compare.
    channel = _root_param(spec, "pipelinechannel--compare_baselines")
    assert (
        channel == "compare_baselines"
        and on["triggerPolicy"]["condition"]
        == "inputs.parameter_values['pipelinechannel--compare_baselines'] == true"
    )
    inside = components[on["componentRef"]["name"]]["dag"]["tasks"]
    loop = next(task for name, task in inside.items() if name.startswith("for-loop"))
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--baselines"
    assert set(components[loop["componentRef"]["name"]]["dag"]["tasks"]) == {"baseline"}
    assert "for-loop-3" in inside["compare"]["dependentTasks"]
    # Off: the stand-in; register takes the branch's one output either way, so it waits for the comparison.
    assert set(components[off["componentRef"]["name"]]["dag"]["tasks"]) == {"no-baselines"}
    source = tasks["register"]["inputs"]["parameters"]["comparison_uri"]["taskOutputParameter"]
    assert source["producerTask"] == BRANCHES and BRANCHES in tasks["register"]["dependentTasks"]
    # A baseline runs on the GPU pool like eval, with the expert's key; compare needs only the store and MLflow.
    assert _container(spec, "baseline")["image"] == PipelineConfig().trainer_image
    assert "nodeSelector" in spec["platform"]["exec-baseline"]
    assert {
        i["envVar"] for s in spec["platform"]["exec-compare"]["secretAsEnv"] for i in s["keyToEnv"]
    } == S3_ENV | MLFLOW_ENV


def test_steps_output_their_data_and_models_as_kfp_artifacts(spec: dict[str, Any]) -> None:
    components = spec["pipeline"]["components"]
    outputs = {
        task: components[f"comp-{task}"]["outputDefinitions"]["artifacts"]
        for task in ("synth", "sft", "rl1", "rl2", "eval")
    }
    types = {
        task: {name: out["artifactType"]["schemaTitle"] for name, out in arts.items()}
        for task, arts in outputs.items()
    }
    assert types == {
        "synth": {"dataset": "system.Dataset"},
        "sft": {"model": "system.Model"},
        "rl1": {"model": "system.Model"},
        "rl2": {"model": "system.Model"},
        "eval": {"report": "system.Artifact"},
    }


def test_an_output_artifact_points_at_the_object_in_the_store() -> None:
    from kfp.dsl import Model

    model = Model(uri="/gcs/pipeline-root/rl2/model", metadata={})
    kfp_steps.publish_artifact(model, "s3://protege/r/rl2/model", mlflow_model_id="m-1", mlflow_run_id="")
    assert model.uri == "s3://protege/r/rl2/model" and model.metadata == {"mlflow_model_id": "m-1"}


def test_gpu_steps_request_accelerators_from_pipeline_parameters(spec: dict[str, Any]) -> None:
    tasks = _tasks(spec)
    for task in GPU_TASKS:
        accel = _container(spec, task)["resources"]["accelerator"]
        assert "gpu_type" in accel["resourceType"] and "gpu_count" in accel["resourceCount"]
        inputs = tasks[task]["inputs"]["parameters"]
        for name in ("gpu_type", "gpu_count"):
            channel = inputs[f"pipelinechannel--{name}"]["componentInputParameter"]
            assert _root_param(spec, channel) == name
    for task in CPU_TASKS:
        assert "accelerator" not in _container(spec, task).get("resources", {}), task


def test_eval_runs_on_the_gpu_pool_and_serves_the_model_it_evaluates(spec: dict[str, Any]) -> None:
    container = _container(spec, "eval")
    accel = container["resources"]["accelerator"]
    assert "gpu_type" in accel["resourceType"] and "gpu_count" in accel["resourceCount"]
    assert container["image"] == PipelineConfig().trainer_image  # the image with vLLM and CUDA
    code = "\n".join(container["command"] + container.get("args", []))
    # The step's code starts the server of the model it evaluates (rl2's output) and evaluates through it.
    assert "with serving.served_policy(cfg, model_uri, store, work) as served:" in code
    assert "evaluate.run(served, model_uri, work, tracker, store)" in code
    model_uri = _tasks(spec)["eval"]["inputs"]["parameters"]["model_uri"]
    assert model_uri["taskOutputParameter"]["producerTask"] == "rl2"
    assert "nodeSelector" in spec["platform"]["exec-eval"] and "tolerations" in spec["platform"]["exec-eval"]


def test_an_exit_handler_closes_the_parent_run_whatever_the_steps_did(spec: dict[str, Any]) -> None:
    root = spec["pipeline"]["root"]["dag"]["tasks"]
    assert set(root) == {"exit-handler-1", "close-run"}
    closer = root["close-run"]
    assert closer["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"  # runs after failures too
    assert closer["dependentTasks"] == ["exit-handler-1"] and closer["cachingOptions"] == {}  # never cached
    assert "{{$.pipeline_job_uuid}}" in str(closer["inputs"]["parameters"]["kfp_run_id"])
    component = spec["pipeline"]["components"]["comp-close-run"]["inputDefinitions"]["parameters"]
    assert component["status"]["parameterType"] == "TASK_FINAL_STATUS"
    container = _container(spec, "close-run")
    code = "\n".join(container["command"] + container.get("args", []))
    assert "kfp_steps.close_pipeline_run(cfg, kfp_run_id, status.state, status.error_message)" in code
    executor = spec["platform"]["exec-close-run"]
    assert {item["envVar"] for secret in executor["secretAsEnv"] for item in secret["keyToEnv"]} == MLFLOW_ENV
    assert int(executor["activeDeadlineSeconds"]) == PipelineConfig().timeouts_s["close"]


def test_the_exit_handler_closes_a_failed_runs_parent_run_failed_with_the_failing_step(mlflow_server) -> None:
    import uuid

    from protege.tracking import Tracker

    cfg = kfp_steps.step_config(
        "local",
        json.dumps(
            [f"tracking.uri={mlflow_server.mlflow_url}", f"tracking.experiment=exit-{uuid.uuid4().hex[:8]}"]
        ),
    )
    tracker = Tracker(cfg.tracking)
    parent = tracker.start_pipeline("r", tags={kfp_steps.TAG_KFP_RUN: "kfp-9"})
    with tracker.phase("sft"):
        pass
    with pytest.raises(RuntimeError), tracker.phase("rl1"):
        raise RuntimeError("CUDA out of memory")
    done = kfp_steps.close_pipeline_run(cfg, "kfp-9", "FAILED", "task rl1 failed")
    assert done == f"KFP run kfp-9 ended FAILED: MLflow run {parent} closed FAILED at step rl1"
    run = tracker.get_run(parent)
    assert run.info.status == "FAILED" and run.data.tags[kfp_steps.TAG_FAILED_STEP] == "rl1"
    assert run.data.tags[kfp_steps.TAG_FAILURE] == "KFP run kfp-9 ended FAILED: task rl1 failed"
    # A run that failed before sft has no MLflow run to close; a succeeded one was closed by register.
    assert "before sft opened its MLflow run" in kfp_steps.close_pipeline_run(cfg, "kfp-other", "FAILED")
    other = Tracker(cfg.tracking).start_pipeline("ok", tags={kfp_steps.TAG_KFP_RUN: "kfp-ok"})
    assert "closed by register" in kfp_steps.close_pipeline_run(cfg, "kfp-ok", kfp_steps.SUCCEEDED)
    assert tracker.get_run(other).info.status == "RUNNING"


def test_gpu_pool_node_selector_and_tolerations_are_pipeline_parameters(spec: dict[str, Any]) -> None:
    params = spec["pipeline"]["root"]["inputDefinitions"]["parameters"]
    assert params["gpu_tolerations"]["defaultValue"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert params["gpu_node_selector"]["parameterType"] == "STRUCT"
    for task in GPU_TASKS:
        executor = spec["platform"][f"exec-{task}"]
        selector = executor["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"]
        tolerations = executor["tolerations"][0]["tolerationJson"]["componentInputParameter"]
        assert _root_param(spec, selector) == "gpu_node_selector"
        assert _root_param(spec, tolerations) == "gpu_tolerations"
    for task in CPU_TASKS:
        assert "nodeSelector" not in spec["platform"][f"exec-{task}"], task
        assert "tolerations" not in spec["platform"][f"exec-{task}"], task


def test_secrets_reach_exactly_the_steps_that_need_them(spec: dict[str, Any]) -> None:
    cfg = PipelineConfig()
    for task, expected in EXPECTED_SECRET_ENV.items():
        secrets = spec["platform"][f"exec-{task}"]["secretAsEnv"]
        env = {item["envVar"] for secret in secrets for item in secret["keyToEnv"]}
        assert env == expected, task
        names = {secret["secretName"] for secret in secrets}
        assert cfg.s3_secret in names and (cfg.anthropic_secret in names) == ("ANTHROPIC_API_KEY" in expected)


def test_caching_only_on_verify_and_synth(spec: dict[str, Any]) -> None:
    tasks = _tasks(spec)
    cached = {name for name in CHAIN if tasks[name]["cachingOptions"].get("enableCache")}
    assert cached == {"verify-tasks", "synth"}


def test_training_steps_are_scoped_to_the_kfp_run_and_cached_steps_are_not(spec: dict[str, Any]) -> None:
    tasks = _tasks(spec)
    scoped = {
        name
        for name in CHAIN
        if "{{$.pipeline_job_uuid}}"
        in str(tasks[name]["inputs"]["parameters"].get("kfp_run_id", {}).get("runtimeValue", {}))
    }
    # A per-run value in a cached step's inputs would make every run a cache miss.
    assert scoped == {"sft", "rl1", "rl2", "eval", "register"}


def test_retries_on_sandbox_and_expert_steps_and_a_timeout_on_every_step(spec: dict[str, Any]) -> None:
    cfg = PipelineConfig()
    tasks = _tasks(spec)
    retried = {name for name in CHAIN if "retryPolicy" in tasks[name]}
    assert retried == {"verify-tasks", "synth", "rl1", "rl2", "eval"}
    assert tasks["synth"]["retryPolicy"]["maxRetryCount"] == cfg.retries
    for task in CHAIN:
        deadline = int(spec["platform"][f"exec-{task}"]["activeDeadlineSeconds"])
        assert deadline == cfg.timeouts_s[STEP_OF[task]], task


def test_images_trainer_for_training_agent_for_the_rest(spec: dict[str, Any]) -> None:
    cfg = PipelineConfig()
    for task in CHAIN:
        container = _container(spec, task)
        assert container["image"] == (cfg.trainer_image if task in GPU_TASKS else cfg.agent_image), task
        # packages_to_install stays empty: the pip line installs KFP's own bootstrap and nothing else.
        pip_line = next(line for line in container["command"][2].splitlines() if "pip install" in line)
        packages = re.findall(r"'([^']+)'", pip_line.split("&&")[0])
        assert [p for p in packages if not p.startswith(("kfp==", "--no-deps", "typing-extensions"))] == [], (
            task
        )


def test_committed_yaml_equals_a_fresh_compile() -> None:
    assert not kfp_cli.is_stale(kfp_cli.PIPELINE_YAML), "run `protege compile` and commit the YAML"


def test_compile_check_exits_1_on_stale_yaml_and_0_after_compile(tmp_path: Path, capsys) -> None:
    target = tmp_path / "pipeline.yaml"
    assert main(["compile", "--check", "--output", str(target)]) == 1  # missing
    assert main(["compile", "--output", str(target)]) == 0
    assert main(["compile", "--check", "--output", str(target)]) == 0
    target.write_text(target.read_text().replace("nvidia.com/gpu", "amd.com/gpu"))
    assert main(["compile", "--check", "--output", str(target)]) == 1
    assert "stale" in capsys.readouterr().err


def test_place_rejects_an_unknown_step() -> None:
    with pytest.raises(PlacementError, match="unknown step 'train'"):
        place(object(), "train", PipelineConfig(), GpuPool("nvidia.com/gpu", 1, {}, []))


# --------------------------------------------------------------------------------------------------
# submit / schedule: the real kfp.Client against a loopback server that records the KFP REST requests
# --------------------------------------------------------------------------------------------------


class FakeKFPApi(BaseHTTPRequestHandler):
    """The few KFP v2beta1 endpoints submit/schedule use; every request lands in `requests`."""

    requests: list[tuple[str, str, dict[str, Any]]] = []

    def _reply(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.requests.append(("GET", self.path, {}))
        self._reply({"multi_user": False} if "healthz" in self.path else {})  # no experiment exists yet

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        self.requests.append(("POST", self.path, body))
        replies = {
            "/apis/v2beta1/experiments": {"experiment_id": "exp-7", "display_name": body.get("display_name")},
            "/apis/v2beta1/runs": {"run_id": "run-123", "display_name": body.get("display_name")},
            "/apis/v2beta1/recurringruns": {
                "recurring_run_id": "rr-1",
                "display_name": body.get("display_name"),
            },
        }
        self._reply(replies[self.path])

    def log_message(self, *args: Any) -> None:
        pass  # keep pytest output clean


@pytest.fixture
def kfp_api() -> Iterator[str]:
    FakeKFPApi.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeKFPApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _parse(argv: list[str]) -> argparse.Namespace:
    from protege.cli import build_parser

    return build_parser().parse_args(argv)


def _posted(path: str) -> dict[str, Any]:
    bodies = [body for method, where, body in FakeKFPApi.requests if method == "POST" and where == path]
    assert len(bodies) == 1, f"expected one POST {path}, got {FakeKFPApi.requests}"
    return bodies[0]


@pytest.mark.filterwarnings("ignore:This client only works with Kubeflow Pipeline")
def test_submit_posts_the_compiled_pipeline_with_given_params_only(kfp_api: str, capsys) -> None:
    argv = [
        "submit",
        "--host",
        kfp_api,
        "--experiment",
        "nightly",
        "--base-model",
        "s3://models/qwen",
        "--override",
        "rl.group_size=4",
        "--override",
        "eval.workers=2",
        "--gpu-count",
        "4",
        "--gpu-node-selector",
        '{"pool": "h100"}',
        "--run-name",
        "r1",
    ]
    assert main(argv) == 0
    assert "submitted run run-123 in experiment 'nightly'" in capsys.readouterr().out
    assert _posted("/apis/v2beta1/experiments")["display_name"] == "nightly"
    run = _posted("/apis/v2beta1/runs")
    assert run["display_name"] == "r1" and run["experiment_id"] == "exp-7"
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == PipelineConfig().name
    posted = run["pipeline_spec"]["pipeline_spec"]
    assert set(posted["root"]["dag"]["tasks"]) == {"exit-handler-1", "close-run"}
    assert set(posted["components"]["comp-exit-handler-1"]["dag"]["tasks"]) == set(CHAIN) | {BRANCHES}
    executors = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"][
        "executors"
    ]
    assert "tolerations" in executors["exec-sft"]  # the Kubernetes placement travels with the run
    assert run["service_account"] == "protege-pipeline"  # the default, manifests/base/rbac.yaml's
    assert run["runtime_config"]["parameters"] == {
        "profile": "cluster",
        "base_model": "s3://models/qwen",
        "gpu_count": 4,
        "overrides": json.dumps(["rl.group_size=4", "eval.workers=2"]),
        "gpu_node_selector": {"pool": "h100"},
    }


@pytest.mark.filterwarnings("ignore:This client only works with Kubeflow Pipeline")
def test_schedule_posts_a_recurring_run_with_kfp_cron_in_the_experiment(kfp_api: str, capsys) -> None:
    argv = [
        "schedule",
        "--host",
        kfp_api,
        "--cron",
        "0 3 * * 1",
        "--experiment",
        "retrain",
        "--train-tasks",
        "s3://t/train",
        "--service-account",
        "retrainer",
    ]
    assert main(argv) == 0
    assert "scheduled recurring run rr-1 on '0 0 3 * * 1'" in capsys.readouterr().out
    assert _posted("/apis/v2beta1/experiments")["display_name"] == "retrain"
    job = _posted("/apis/v2beta1/recurringruns")
    assert job["experiment_id"] == "exp-7" and job["display_name"] == "protege-retrain"
    assert job["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 1"
    assert (
        job["no_catchup"] is True and int(job["max_concurrency"]) == PipelineConfig().schedule_max_concurrency
    )
    assert job["runtime_config"]["parameters"] == {"profile": "cluster", "train_tasks": "s3://t/train"}
    assert job["service_account"] == "retrainer"
    assert job["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == PipelineConfig().name


def test_submit_and_schedule_default_to_the_namespace_and_account_of_the_manifests() -> None:
    root = Path(__file__).resolve().parents[1] / "manifests"
    rbac = list(yaml.safe_load_all((root / "base" / "rbac.yaml").read_text()))
    account = next(doc for doc in rbac if doc["kind"] == "ServiceAccount")["metadata"]
    recurring = yaml.safe_load((root / "recurring-run" / "recurring-run.yaml").read_text())
    for argv in (["submit"], ["schedule", "--cron", "0 3 * * 0"]):
        args = _parse(argv)
        assert (args.namespace, args.service_account) == (account["namespace"], account["name"])
        assert (args.namespace, args.service_account) == (
            recurring["namespace"],
            recurring["service_account"],
        )


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["schedule", "--cron", "every day"], "expected 5 .* got 2"),
        (["submit", "--gpu-node-selector", "[1]"], "--gpu-node-selector: expected a JSON dict"),
        (["submit", "--gpu-tolerations", "{oops"], "--gpu-tolerations: not JSON"),
    ],
)
def test_bad_submit_and_schedule_input_is_named_before_any_request(argv: list[str], error: str) -> None:
    def no_client(host: str | None) -> Any:
        raise AssertionError("no request may be sent")

    command = kfp_cli.schedule if argv[0] == "schedule" else kfp_cli.submit
    with pytest.raises(kfp_cli.KFPError, match=error):
        command(_parse(argv), no_client)


# --------------------------------------------------------------------------------------------------
# step config (what every component does first)
# --------------------------------------------------------------------------------------------------


def test_step_config_applies_overrides_then_named_parameters() -> None:
    cfg = kfp_steps.step_config(
        "local",
        '["rl.group_size=4", "tasks.train=demo:all"]',
        tasks__train="s3://b/train.jsonl",
        model__base="",
    )
    assert cfg.rl.group_size == 4 and cfg.tasks.train == "s3://b/train.jsonl"
    assert cfg.model.base == "tiny"  # an empty parameter keeps the profile's value


def test_step_config_scopes_the_run_name_to_the_kfp_run_on_clusters_only() -> None:
    # A scheduled retraining must not resume the previous run's checkpoints under the same run name.
    assert kfp_steps.step_config("cluster", "[]", "kfp-123").run_name == "protege-kfp-123"
    assert kfp_steps.step_config("cluster", "[]").run_name == "protege"
    assert kfp_steps.step_config("local", '["run_name=demo-1"]', "kfp-123").run_name == "demo-1"


def test_step_configs_put_each_variant_s_overrides_after_the_list_and_before_named_parameters() -> None:
    configs = kfp_steps.step_configs(
        "local", '["agent.step_limit=7", "tasks.eval=a.jsonl"]', tasks__eval="s3://b/eval.jsonl"
    )
    plain, variant = configs([]), configs(["agent.step_limit=3", "tasks.eval=c.jsonl"])
    assert (plain.agent.step_limit, variant.agent.step_limit) == (7, 3)
    assert plain.tasks.eval == variant.tasks.eval == "s3://b/eval.jsonl"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("rl.group_size=4", "not a JSON list"),
        ('{"a": 1}', "expected a JSON list"),
        ('["ok=1", 3]', r"overrides\[1\]"),
    ],
)
def test_bad_overrides_name_the_bad_item(text: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        kfp_steps.parse_overrides(text)


# --------------------------------------------------------------------------------------------------
# one real component under kfp.local (SubprocessRunner, this venv), against a real s3rver
# --------------------------------------------------------------------------------------------------

TRAIN_ID, EVAL_ID = "protege-demo__csvcols-1", "protege-demo__minitemplate-1"


@pytest.mark.filterwarnings("ignore:You may be attemping to run a task that uses custom")
def test_verify_component_runs_under_kfp_local(store, tmp_path: Path, monkeypatch) -> None:
    from kfp import local
    from kfp.local.config import LocalExecutionConfig

    from components.verify_tasks import verify_tasks
    from protege.demo import build_demo_repos
    from protege.tasksets import load_task_set

    repos = tmp_path / "repos"
    tasks = {t.instance_id: t for t in load_task_set("demo:all")}
    build_demo_repos(repos, only=[tasks[TRAIN_ID].repo, tasks[EVAL_ID].repo])
    # Locally no Kubernetes Secret is injected: the component reads the store's endpoint and keys from env.
    monkeypatch.setenv("PROTEGE_S3_ENDPOINT", store._cfg.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", store._cfg.access_key.get_secret_value())
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", store._cfg.secret_key.get_secret_value())
    overrides = [
        f"store.bucket={store._cfg.bucket}",
        f"services.data_dir={tmp_path / 'data'}",
        f"tasks.repos_dir={repos}",
        f"tasks.train_ids=[{TRAIN_ID}]",
        f"tasks.eval_ids=[{EVAL_ID}]",
    ]
    monkeypatch.setattr(LocalExecutionConfig, "instance", None)  # undo local.init after the test
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    task = verify_tasks(
        profile="local", overrides=json.dumps(overrides), train_tasks="", eval_tasks="demo:eval"
    )
    report_uri = task.outputs["report_uri"]
    assert report_uri == f"s3://{store._cfg.bucket}/protege/verify/verify.json"
    report = json.loads(store.fetch(report_uri, tmp_path / "fetched").read_text())
    assert [v["instance_id"] for v in report["train"]["verdicts"]] == [TRAIN_ID]
    assert report["eval"]["ok"] and report["train"]["ok"]
    assert report["eval"]["split"] == "eval"  # each set's origin (split; for a hub set also its commit)
    assert len(task.outputs["tasks_digest"]) == 64


def test_the_git_commit_comes_from_the_image_build_argument_else_from_git(monkeypatch) -> None:
    import subprocess

    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=kfp_steps.SOURCE_ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    monkeypatch.delenv(kfp_steps.GIT_COMMIT_ENV, raising=False)
    assert kfp_steps.git_commit() == head and len(head) == 40
    monkeypatch.setenv(kfp_steps.GIT_COMMIT_ENV, "unknown")  # an image built without GIT_COMMIT
    assert kfp_steps.git_commit() == head
    monkeypatch.setenv(kfp_steps.GIT_COMMIT_ENV, "f" * 40)
    assert kfp_steps.git_commit() == "f" * 40


def test_lineage_gives_register_every_tag_it_needs(monkeypatch) -> None:
    from protege import register

    monkeypatch.setenv(kfp_steps.GIT_COMMIT_ENV, "abc123")
    cfg = kfp_steps.step_config("local", "[]")
    found = kfp_steps.lineage(cfg, kfp_run_id="kfp-1", dataset_digest="d" * 64, eval_set_digest="e" * 64)
    tags = register.lineage_tags(found)
    assert tags["protege.git_commit"] == "abc123" and tags["protege.kfp_run_id"] == "kfp-1"
    assert json.loads(tags["protege.dataset_digests"]) == {"synth": "d" * 64}
    pinned = "ghcr.io/protege-ai/protege-agent@sha256:" + "a" * 64
    cfg = kfp_steps.step_config("local", f'["pipeline.agent_image={pinned}"]')
    images = kfp_steps.lineage(cfg, kfp_run_id="k", dataset_digest="d", eval_set_digest="e")["image_digests"]
    assert images == {"agent": "sha256:" + "a" * 64, "trainer": cfg.pipeline.trainer_image}  # tag: no digest
    changed = kfp_steps.step_config("local", '["rl.stage2.w_follow=3.0"]')
    again = kfp_steps.lineage(changed, kfp_run_id="kfp-1", dataset_digest="d" * 64, eval_set_digest="e" * 64)
    assert again["reward_config_hash"] != found["reward_config_hash"]
