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

from protege import kfp_cli, kfp_steps
from protege.cli import main
from protege.config import ConfigError, PipelineConfig
from protege.kfp_placement import GpuPool, PlacementError, place

CHAIN = ["verify-tasks", "synth", "sft", "rl1", "rl2", "eval", "register"]
GPU_TASKS = {"sft", "rl1", "rl2"}
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
    return spec["pipeline"]["root"]["dag"]["tasks"]


def _container(spec: dict[str, Any], task: str) -> dict[str, Any]:
    return spec["pipeline"]["deploymentSpec"]["executors"][f"exec-{task}"]["container"]


def test_tasks_chain_in_the_order_of_the_method(spec: dict[str, Any]) -> None:
    tasks = _tasks(spec)
    assert set(tasks) == set(CHAIN)
    for before, after in zip(CHAIN, CHAIN[1:], strict=False):
        assert before in tasks[after]["dependentTasks"], f"{after} must wait for {before}"


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
        assert inputs["pipelinechannel--gpu_type"]["componentInputParameter"] == "gpu_type"
        assert inputs["pipelinechannel--gpu_count"]["componentInputParameter"] == "gpu_count"
    for task in CPU_TASKS:
        assert "accelerator" not in _container(spec, task).get("resources", {}), task


def test_gpu_pool_node_selector_and_tolerations_are_pipeline_parameters(spec: dict[str, Any]) -> None:
    params = spec["pipeline"]["root"]["inputDefinitions"]["parameters"]
    assert params["gpu_tolerations"]["defaultValue"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert params["gpu_node_selector"]["parameterType"] == "STRUCT"
    for task in GPU_TASKS:
        executor = spec["platform"][f"exec-{task}"]
        assert executor["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"] == "gpu_node_selector"
        assert executor["tolerations"][0]["tolerationJson"]["componentInputParameter"] == "gpu_tolerations"
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
    argv = ["submit", "--host", kfp_api, "--experiment", "nightly", "--base-model", "s3://models/qwen",
            "--override", "rl.group_size=4", "--override", "eval.workers=2", "--gpu-count", "4",
            "--gpu-node-selector", '{"pool": "h100"}', "--run-name", "r1"]  # fmt: skip
    assert main(argv) == 0
    assert "submitted run run-123 in experiment 'nightly'" in capsys.readouterr().out
    assert _posted("/apis/v2beta1/experiments")["display_name"] == "nightly"
    run = _posted("/apis/v2beta1/runs")
    assert run["display_name"] == "r1" and run["experiment_id"] == "exp-7"
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == PipelineConfig().name
    assert set(run["pipeline_spec"]["pipeline_spec"]["root"]["dag"]["tasks"]) == set(CHAIN)
    executors = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"][
        "executors"
    ]
    assert "tolerations" in executors["exec-sft"]  # the Kubernetes placement travels with the run
    assert run["runtime_config"]["parameters"] == {
        "profile": "cluster", "base_model": "s3://models/qwen", "gpu_count": 4,
        "overrides": json.dumps(["rl.group_size=4", "eval.workers=2"]), "gpu_node_selector": {"pool": "h100"},
    }  # fmt: skip


@pytest.mark.filterwarnings("ignore:This client only works with Kubeflow Pipeline")
def test_schedule_posts_a_recurring_run_with_kfp_cron_in_the_experiment(kfp_api: str, capsys) -> None:
    argv = ["schedule", "--host", kfp_api, "--cron", "0 3 * * 1", "--experiment", "retrain",
            "--train-tasks", "s3://t/train"]  # fmt: skip
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
    assert job["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == PipelineConfig().name


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
    overrides = [f"store.bucket={store._cfg.bucket}", f"services.data_dir={tmp_path / 'data'}",
                 f"tasks.repos_dir={repos}", f"tasks.train_ids=[{TRAIN_ID}]", f"tasks.eval_ids=[{EVAL_ID}]"]  # fmt: skip
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
    assert len(task.outputs["tasks_digest"]) == 64


def test_lineage_gives_register_every_tag_it_needs(monkeypatch) -> None:
    from protege import register

    monkeypatch.setenv(kfp_steps.GIT_COMMIT_ENV, "abc123")
    cfg = kfp_steps.step_config("local", "[]")
    found = kfp_steps.lineage(cfg, kfp_run_id="kfp-1", dataset_digest="d" * 64, eval_set_digest="e" * 64)
    tags = register.lineage_tags(found)
    assert tags["protege.git_commit"] == "abc123" and tags["protege.kfp_run_id"] == "kfp-1"
    assert json.loads(tags["protege.dataset_digests"]) == {"synth": "d" * 64}
    changed = kfp_steps.step_config("local", '["rl.stage2.w_follow=3.0"]')
    again = kfp_steps.lineage(changed, kfp_run_id="kfp-1", dataset_digest="d" * 64, eval_set_digest="e" * 64)
    assert again["reward_config_hash"] != found["reward_config_hash"]
