"""Fault injection (issue 17, faults) on real local servers: for each fault, nothing is lost and the final
state (local files, S3 objects, MLflow runs) has the same counts as an undisturbed run.

- the S3 server stopped and started again mid-synth, and stopped until synth ends then a rerun;
- MLflow stopped mid-SFT and started again while training goes on;
- corrupted checkpoints before a resume: flipped bytes, truncated file, missing file, bad JSON in the
  trainer state and in the manifest (store copy used), and without a store (previous checkpoint used);
  a nan weight or loss stops SFT naming the step and publishes nothing after it;
- the expert (a local Anthropic/OpenAI-speaking server, never the paid API): 529, 429, timeout,
  malformed 200 replies, an hour-long retry-after; a synth episode hit by one is rerun;
- synth killed with SIGKILL (a subprocess) and rerun.

The services here are this module's own `LocalServices` (not the session fixtures), since the tests stop
and restart them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from protege import sft, synth, training
from protege.agent.expert import ExpertService
from protege.config import ExpertConfig, ServicesConfig, StoreConfig, TrackingConfig, load_config
from protege.services import LocalServices, free_port
from protege.store import S3ArtifactStore, write_manifest
from protege.trajectory import Message, read_trajectories
from tests.agent.anthropic_mock import (
    Canned,
    MockLLMServer,
    anthropic_error,
    anthropic_text,
    malformed_reply,
    openai_text,
)
from tests.conftest import TEST_ACCESS_KEY, TEST_SECRET_KEY

TASKS = ["protege-demo__daterange-1", "protege-demo__textstats-1", "protege-demo__csvcols-1"]
KEY = "test-key"
# Store retries short enough that an outage outlasts them (the queue then takes over).
FAST_STORE = (
    "store.op_attempts=2",
    "store.retry_backoff_s=0.1",
    "store.op_backoff_max_s=0.5",
    "store.max_retries=0",
    "store.connect_timeout_s=1",
)


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory):
    cfg = ServicesConfig(
        data_dir=str(tmp_path_factory.mktemp("fault-services")), s3_port=free_port(), mlflow_port=free_port()
    )
    store = StoreConfig(access_key=TEST_ACCESS_KEY, secret_key=TEST_SECRET_KEY, bucket="faults")
    local = LocalServices(cfg, store, emit=lambda line: None)
    local.start_s3()
    yield local
    local.down()


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from protege.demo import build_demo_repos

    path = tmp_path_factory.mktemp("repos")
    build_demo_repos(path)
    return path


def new_bucket(services: LocalServices, cfg_store: StoreConfig) -> S3ArtifactStore:
    store = S3ArtifactStore.from_config(cfg_store)
    store.ensure_bucket()
    return store


# --------------------------------------------------------------------------------------------------
# synth: what an undisturbed run leaves behind
# --------------------------------------------------------------------------------------------------


def synth_cfg(repos: Path, tmp: Path, services: LocalServices, bucket: str, *overrides: str):
    endpoint = services.store_config().endpoint
    return load_config(
        "local",
        overrides=[
            f"tasks.repos_dir={repos}",
            f"eval.grade_logs_dir={tmp / 'grading'}",
            f"tasks.train_ids=[{','.join(TASKS)}]",
            "synth.concurrency=1",
            f"store.endpoint={endpoint}",
            f"store.access_key={TEST_ACCESS_KEY}",
            f"store.secret_key={TEST_SECRET_KEY}",
            f"store.bucket={bucket}",
            *FAST_STORE,
            *overrides,
        ],
    )


def synth_state(result: dict, out: Path, store: S3ArtifactStore, cfg, tracker=None) -> dict:
    """Counts that must not depend on faults: episodes (local, unique), verdicts, S3 objects, and with a
    tracker the synth run in MLflow (status, metrics, dataset digest)."""
    local = [(t.instance_id, t.attempt) for t in read_trajectories(out / synth.TRAJECTORIES)]
    prefix = f"s3://{cfg.store.bucket}/{cfg.run_name}/{synth.PHASE}"
    stored_file = out.parent / f"{out.name}-stored.jsonl"
    store.download_file(f"{prefix}/{synth.TRAJECTORIES}", stored_file)
    stored = {(t.instance_id, t.attempt) for t in read_trajectories(stored_file)}
    summary = result["summary"]
    return {
        "unique_episodes": len(set(local)),
        "kept": summary["kept"],
        "rejected": summary["rejected_by_reason"],
        "episode_objects": len([u for u in store.list(f"{prefix}/episodes/") if u.endswith(".json")]),
        "stored_trajectories": len(stored),
        "dataset_records": json.loads(
            (out / synth.DATASET_DIR / "dataset_card.json").read_text() or "{}"
        ).get("records"),
        "dataset_in_store": store.exists(f"{prefix}/{synth.DATASET_DIR}"),
        **({"mlflow": mlflow_state(tracker, result["mlflow_run_id"])} if tracker is not None else {}),
    }


def mlflow_state(tracker, run_id: str) -> dict:
    run = tracker.get_run(run_id)
    digests = sorted(d.dataset.digest for d in run.inputs.dataset_inputs)
    return {"status": run.info.status, "metrics": dict(run.data.metrics), "datasets": digests}


def without_mlflow(state: dict) -> dict:
    return {k: v for k, v in state.items() if k != "mlflow"}


@pytest.fixture(scope="module")
def synth_reference(mlflow_up, repos, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("synth-reference")
    cfg = synth_cfg(repos, tmp, mlflow_up, "synth-reference")
    store = new_bucket(mlflow_up, cfg.store)
    tracker = tracker_for(mlflow_up, f"faults-{uuid.uuid4().hex[:8]}")
    result = synth.run(cfg, tmp / "out", tracker, store, progress=lambda line: None)
    state = synth_state(result, tmp / "out", store, cfg, tracker)
    assert state["mlflow"]["status"] == "FINISHED" and state["mlflow"]["metrics"]["episodes"] == len(TASKS)
    assert state["unique_episodes"] == state["episode_objects"] == len(TASKS)
    return state


# --------------------------------------------------------------------------------------------------
# S3 down mid-synth
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_s3_down_and_up_again_mid_synth_loses_nothing(mlflow_up, repos, synth_reference, tmp_path):
    services = mlflow_up
    cfg = synth_cfg(repos, tmp_path, services, "s3-blip")
    store = new_bucket(services, cfg.store)
    tracker = tracker_for(services, f"faults-{uuid.uuid4().hex[:8]}")
    lines: list[str] = []

    def progress(line: str) -> None:  # the first episode is recorded: S3 goes down; the second: back up
        lines.append(line)
        if line.startswith("[1/"):
            services.stop("s3")
        elif line.startswith("[2/"):
            services.start_s3()

    try:
        result = synth.run(cfg, tmp_path / "out", tracker, store, progress=progress)
    finally:
        services.start_s3()
    assert any("store unavailable, queueing episode uploads" in line for line in lines)
    assert any("every queued episode upload is done" in line for line in lines)
    assert synth_state(result, tmp_path / "out", store, cfg, tracker) == synth_reference


@pytest.mark.slow
def test_s3_down_until_synth_ends_fails_in_one_line_and_a_rerun_completes(
    mlflow_up, repos, synth_reference, tmp_path
):
    services = mlflow_up
    cfg = synth_cfg(repos, tmp_path, services, "s3-outage", "store.flush_timeout_s=1")
    store = new_bucket(services, cfg.store)

    def progress(line: str) -> None:
        if line.startswith("[1/"):
            services.stop("s3")

    try:
        with pytest.raises(synth.SynthError) as failure:
            synth.run(cfg, tmp_path / "out", store=store, progress=progress)
    finally:
        services.start_s3()
    message = str(failure.value)
    assert "\n" not in message and "still pending" in message and "rerun" in message
    assert len(list(read_trajectories(tmp_path / "out" / synth.TRAJECTORIES))) == len(TASKS)  # all local
    lines: list[str] = []
    tracker = tracker_for(services, f"faults-{uuid.uuid4().hex[:8]}")
    again = synth.run(cfg, tmp_path / "out", tracker, store, progress=lines.append)
    assert again["ran_now"] == 0
    assert any("not in the store yet; uploading them" in line for line in lines)
    assert synth_state(again, tmp_path / "out", store, cfg, tracker) == synth_reference


# --------------------------------------------------------------------------------------------------
# kill -9 mid-synth, then rerun (subprocesses of the real CLI)
# --------------------------------------------------------------------------------------------------


def _wait_for_records(path: Path, count: int, proc: subprocess.Popen, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if path.is_file() and path.read_bytes().count(b"\n") >= count:
            return path.read_bytes().count(b"\n")
        time.sleep(0.1)
    raise AssertionError(f"synth wrote fewer than {count} record(s) in {timeout_s} s (exit {proc.poll()})")


@pytest.mark.slow
def test_kill_9_mid_synth_then_rerun_loses_nothing(services, repos, synth_reference, tmp_path):
    cfg = synth_cfg(repos, tmp_path, services, "kill-9")
    store = new_bucket(services, cfg.store)
    out = tmp_path / "out"
    overrides = [
        f"tasks.repos_dir={repos}",
        f"eval.grade_logs_dir={tmp_path / 'grading'}",
        "synth.concurrency=1",
        f"store.bucket={cfg.store.bucket}",
    ]
    command = [sys.executable, "-m", "protege.cli", "synth", "--ids", ",".join(TASKS), "--out", str(out)]
    command += ["--no-track", *overrides]
    env = {**os.environ, **services.env(), "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_for_records(out / synth.TRAJECTORIES, 1, proc, timeout_s=300)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its sandboxes, mid-episode
        proc.wait()
    before = len(list(read_trajectories(out / synth.TRAJECTORIES)))
    assert 1 <= before < len(TASKS)
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    keys = [(t.instance_id, t.attempt) for t in read_trajectories(out / synth.TRAJECTORIES)]
    assert len(keys) == len(set(keys)) == len(TASKS)  # nothing lost, nothing twice
    result = json.loads((out / synth.SUMMARY).read_text())
    assert result["ran_now"] == len(TASKS) - before
    assert synth_state(result, out, store, cfg) == without_mlflow(synth_reference)


# --------------------------------------------------------------------------------------------------
# The expert: transient failures never raise, retry-after is capped, synth reruns what they hit
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def task():
    from tests.grading_helpers import make_task

    return make_task()


HISTORY = [Message(role="user", provenance="task", content="fix it")]


def expert_cfg(server: MockLLMServer, tmp_path: Path, backend: str = "anthropic", **over) -> ExpertConfig:
    base_url = server.url + ("/v1" if backend == "openai" else "")
    fields = {
        "backend": backend,
        "model": "m",
        "base_url": base_url,
        "timeout_s": 5.0,
        "max_retries": 1,
        "retry_backoff_s": 0.0,
        "cache_mode": "off",
        "cache_dir": str(tmp_path / "cache"),
    }
    return ExpertConfig(**{**fields, **over})


def ask(cfg: ExpertConfig, task, timeout_s: float = 60.0):
    """One ask_expert call in a thread, so a wait without bound fails the test instead of hanging it."""
    box: dict = {}
    worker = threading.Thread(
        target=lambda: box.update(
            call=ExpertService(cfg, api_key=KEY).session(6, 2.0).ask("q", HISTORY, task, 1)
        )
    )
    worker.start()
    worker.join(timeout_s)
    assert not worker.is_alive(), f"ask_expert still waiting after {timeout_s} s"
    return box["call"]


FAST = {"retry-after-ms": "1"}


@pytest.mark.parametrize(
    ("backend", "scripted", "transient", "expected"),
    [
        ("anthropic", [anthropic_error(529, "overloaded_error", "Overloaded", FAST)] * 2, True, "HTTP 529"),
        ("anthropic", [anthropic_error(429, "rate_limit_error", "slow down", FAST)] * 2, True, "HTTP 429"),
        ("anthropic", [malformed_reply()] * 2, True, "malformed reply"),
        ("anthropic", [Canned(200, {"type": "message"})] * 2, True, "malformed reply"),
        ("anthropic", [anthropic_error(400, "invalid_request_error", "bad")], False, "HTTP 400"),
        ("openai", [malformed_reply()] * 2, True, "malformed response"),
        ("openai", [Canned(429, {"error": {"message": "slow"}})] * 2, True, "HTTP 429"),
    ],
    ids=[
        "529",
        "429",
        "non-json-200",
        "wrong-shape-200",
        "400-is-permanent",
        "openai-non-json",
        "openai-429",
    ],
)
def test_expert_failures_come_back_as_calls_marked_transient(
    task, tmp_path, backend, scripted, transient, expected
):
    with MockLLMServer(api_key=KEY) as server:
        server.push(*scripted)
        call = ask(expert_cfg(server, tmp_path, backend), task)
        assert server.pending == 0
    assert call.status == "error" and expected in call.error
    assert call.transient is transient and call.cost_usd == 0.0


@pytest.mark.parametrize("backend", ["anthropic", "openai"])
def test_malformed_reply_then_a_good_one_is_an_answer(task, tmp_path, backend):
    good = anthropic_text("look at clamp") if backend == "anthropic" else openai_text("look at clamp")
    with MockLLMServer(api_key=KEY) as server:
        server.push(malformed_reply(), good)
        call = ask(expert_cfg(server, tmp_path, backend), task)
    assert call.status == "ok" and call.reply == "look at clamp"


@pytest.mark.parametrize("backend", ["anthropic", "openai"])
def test_an_hour_long_retry_after_is_capped(task, tmp_path, backend):
    hour = anthropic_error(429, "rate_limit_error", "come back in an hour", {"retry-after": "3600"})
    good = anthropic_text("ok") if backend == "anthropic" else openai_text("ok")
    with MockLLMServer(api_key=KEY) as server:
        server.push(hour, good)
        call = ask(expert_cfg(server, tmp_path, backend, retry_after_max_s=0.2), task, timeout_s=60)
        assert server.request_count == 2
    assert call.status == "ok" and call.reply == "ok"


def test_expert_timeout_is_transient(task, tmp_path):
    slow = anthropic_text("too late")
    slow.delay_s = 1.0
    with MockLLMServer(api_key=KEY) as server:
        server.push(slow)
        call = ask(expert_cfg(server, tmp_path, timeout_s=0.2, max_retries=0), task)
    assert call.status == "error" and call.transient and "timed out" in call.error


class DefaultingServer(MockLLMServer):
    """Answers from the queue first, then always with one good reply (an episode asks a variable number)."""

    def _answer(self, request):
        with self._lock:
            empty = not self._queue
        if empty:
            self.push(anthropic_text("The failing test names the function to fix; read it first."))
        return super()._answer(request)


@pytest.mark.slow
def test_synth_reruns_an_episode_hit_by_a_transient_expert_failure(repos, tmp_path, monkeypatch, mlflow_up):
    services = mlflow_up
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    with DefaultingServer(api_key=KEY) as server:
        expert = [
            "expert.backend=anthropic",
            f"expert.base_url={server.url}",
            "expert.model=m",
            "expert.cache_mode='off'",
            "expert.max_retries=0",
            "expert.retry_backoff_s=0",
        ]
        reference_cfg = synth_cfg(repos, tmp_path / "ref", services, "expert-ref", *expert)
        reference_store = new_bucket(services, reference_cfg.store)
        reference_tracker = tracker_for(services, f"faults-{uuid.uuid4().hex[:8]}")
        reference = synth.run(
            reference_cfg, tmp_path / "ref", reference_tracker, reference_store, progress=lambda _: None
        )
        cfg = synth_cfg(repos, tmp_path / "hit", services, "expert-hit", *expert)
        store = new_bucket(services, cfg.store)
        server.push(malformed_reply())  # the first expert call of the first episode
        first = synth.run(cfg, tmp_path / "hit", store=store, progress=lambda _: None)
        assert first["summary"]["rejected_by_reason"].get(synth.TRANSIENT) == 1
        lines: list[str] = []
        tracker = tracker_for(services, f"faults-{uuid.uuid4().hex[:8]}")
        again = synth.run(cfg, tmp_path / "hit", tracker, store, progress=lines.append)
    assert again["ran_now"] == 1 and any("(1 after a transient failure)" in line for line in lines)
    assert synth.TRANSIENT not in again["summary"]["rejected_by_reason"]
    assert synth_state(again, tmp_path / "hit", store, cfg, tracker) == synth_state(
        reference, tmp_path / "ref", reference_store, reference_cfg, reference_tracker
    )


# --------------------------------------------------------------------------------------------------
# sft: a tiny model, a real store and a real MLflow server
# --------------------------------------------------------------------------------------------------

STEPS = 3


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.test_sft import build_tiny_dir

    return build_tiny_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.test_sft import chat_record, write_dataset

    return write_dataset(tmp_path_factory.mktemp("dataset"), [chat_record(i) for i in range(6)])


@pytest.fixture(scope="module")
def mlflow_up(services):
    services.start_mlflow()
    return services


def sft_config(tiny_dir: Path, tmp: Path, services: LocalServices, run_name: str, *overrides: str):
    from tests.test_sft import sft_cfg

    endpoint = services.store_config().endpoint
    return sft_cfg(
        tiny_dir,
        tmp,
        f"run_name={run_name}",
        f"sft.max_steps={STEPS}",
        "sft.save_steps=1",
        "sft.global_batch_size=2",
        "sft.per_device_batch_size=2",
        f"store.endpoint={endpoint}",
        f"store.access_key={TEST_ACCESS_KEY}",
        f"store.secret_key={TEST_SECRET_KEY}",
        "store.bucket=sft-faults",
        *overrides,
    )


def tracker_for(services: LocalServices, experiment: str, **over):
    from protege.tracking import Tracker

    fields = {
        "experiment": experiment,
        "request_max_retries": 0,
        "request_timeout_s": 5,
        "retry_backoff_s": 0.2,
        "retry_backoff_max_s": 2.0,
        "flush_timeout_s": 240.0,
        "spool_dir": str(services.data_dir / "spool" / experiment),
        **over,
    }
    return Tracker(services.tracking_config(TrackingConfig(**fields)))


def sft_state(result: dict, tracker, store: S3ArtifactStore, cfg) -> dict:
    """Counts that must not depend on faults: steps, MLflow metric points and models, S3 checkpoints."""
    run = tracker.get_run(result["mlflow_run_id"])
    history = tracker.client.get_metric_history(result["mlflow_run_id"], "loss")
    prefix = store.uri(f"{cfg.run_name}/{sft.PHASE}")
    return {
        "global_step": result["global_step"],
        "status": run.info.status,
        "loss_steps": sorted(m.step for m in history),
        "loss_finite": all(math.isfinite(m.value) for m in history),
        "logged_models": len(tracker.logged_models(result["mlflow_run_id"])),
        "stored_checkpoints": sorted(training.stored_checkpoints(store, prefix)),
        "model_in_store": store.exists(f"{prefix}/{sft.MODEL}"),
        "model_id": result["model_id"] is not None,
    }


@pytest.fixture(scope="module")
def sft_reference(tiny_dir, dataset_dir, mlflow_up, tmp_path_factory) -> dict:
    """An undisturbed tracked run, and a run stopped after step 2 (checkpoints 1 and 2, local and stored)."""
    tmp = tmp_path_factory.mktemp("sft-reference")
    cfg = sft_config(tiny_dir, tmp, mlflow_up, "sft-reference")
    store = new_bucket(mlflow_up, cfg.store)
    tracker = tracker_for(mlflow_up, f"faults-{uuid.uuid4().hex[:8]}")
    result = sft.run(cfg, str(dataset_dir), tmp / "out", tracker, store)
    state = sft_state(result, tracker, store, cfg)
    assert state["loss_steps"] == list(range(1, STEPS + 1)) and state["status"] == "FINISHED"
    stopped_cfg = sft_config(tiny_dir, tmp, mlflow_up, "sft-stopped")
    from tests.test_sft import _stop_after

    sft.run(stopped_cfg, str(dataset_dir), tmp / "stopped", store=store, callbacks=[_stop_after(2)])
    losses = {h["step"]: h["loss"] for h in result["history"] if "loss" in h}
    return {
        "state": state,
        "losses": losses,
        "stopped": tmp / "stopped",
        "store": store,
        "stopped_prefix": store.uri(f"sft-stopped/{sft.PHASE}"),
    }


def mlflow_outage(services: LocalServices, tracker, down_at: int, up_at: int):
    """A callback that stops MLflow after step `down_at` and starts it again after `up_at`, in the
    background (training goes on meanwhile)."""
    from transformers import TrainerCallback

    class Outage(TrainerCallback):
        pending_seen = 0
        restart: threading.Thread | None = None

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == down_at:
                services.stop("mlflow")
            elif state.global_step == up_at:
                self.pending_seen = tracker.pending
                self.restart = threading.Thread(target=services.start_mlflow)
                self.restart.start()

    return Outage()


@pytest.mark.slow
def test_mlflow_down_mid_sft_training_goes_on_and_nothing_is_lost(
    tiny_dir, dataset_dir, mlflow_up, sft_reference, tmp_path
):
    cfg = sft_config(tiny_dir, tmp_path, mlflow_up, "sft-mlflow-outage")
    store = sft_reference["store"]
    tracker = tracker_for(mlflow_up, f"faults-{uuid.uuid4().hex[:8]}")
    outage = mlflow_outage(mlflow_up, tracker, down_at=1, up_at=2)
    try:
        result = sft.run(cfg, str(dataset_dir), tmp_path / "out", tracker, store, callbacks=[outage])
    finally:
        if outage.restart is not None:
            outage.restart.join()
        mlflow_up.start_mlflow()
    assert outage.pending_seen > 0  # step 2's metrics and checkpoint model waited in the buffer
    assert tracker.pending == 0
    assert sft_state(result, tracker, store, cfg) == sft_reference["state"]


@pytest.mark.slow
def test_calls_buffered_by_a_process_that_dies_are_sent_by_the_next_one(mlflow_up):
    experiment = f"faults-{uuid.uuid4().hex[:8]}"
    first = tracker_for(mlflow_up, experiment)
    run_id = first.start_pipeline("spooled")
    mlflow_up.stop("mlflow")
    try:
        first.log_metrics(run_id, {"loss": 1.5}, step=7)
        first.set_tags(run_id, {"note": "logged while MLflow was down"})
        assert first.pending == 2
        spooled = list((mlflow_up.data_dir / "spool" / experiment).glob("*.pkl"))
        assert len(spooled) == 1
        del first  # the process dies here: nothing is flushed
    finally:
        mlflow_up.start_mlflow()
    second = tracker_for(mlflow_up, experiment)  # a rerun
    assert second.pending == 0 and not list((mlflow_up.data_dir / "spool" / experiment).glob("*.pkl"))
    [point] = second.client.get_metric_history(run_id, "loss")
    assert (point.step, point.value) == (7, 1.5)
    assert second.get_run(run_id).data.tags["note"] == "logged while MLflow was down"


# --------------------------------------------------------------------------------------------------
# Corrupted checkpoints before a resume
# --------------------------------------------------------------------------------------------------


def _flip_bytes(ckpt: Path) -> None:
    path = ckpt / "model.safetensors"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))


def _truncate(ckpt: Path) -> None:
    path = ckpt / "optimizer.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CORRUPTIONS = {
    "flipped-bytes": (_flip_bytes, "model.safetensors: sha256 differs"),
    "truncated": (_truncate, "optimizer.pt: size"),
    "missing-file": (lambda ckpt: (ckpt / "scheduler.pt").unlink(), "scheduler.pt: missing"),
    "bad-json-trainer-state": (
        lambda ckpt: (ckpt / "trainer_state.json").write_text("{not json"),
        "trainer_state.json: size",
    ),
    "bad-json-manifest": (
        lambda ckpt: (ckpt / training.CHECKPOINT_MANIFEST).write_text("{not json"),
        "unreadable manifest",
    ),
}


def _copy_stopped_run(sft_reference: dict, tmp: Path, run_name: str | None) -> Path:
    """The stopped run's local checkpoints, and (with a run name) its stored checkpoint-2 under that run."""
    out = tmp / "out"
    shutil.copytree(sft_reference["stopped"], out)
    shutil.rmtree(out / sft.MODEL)  # an interrupted run has no final model
    if run_name:
        store = sft_reference["store"]
        staging = tmp / "staging"
        store.download_dir(f"{sft_reference['stopped_prefix']}/checkpoints/checkpoint-2", staging)
        store.upload_dir(staging, store.uri(f"{run_name}/{sft.PHASE}/checkpoints/checkpoint-2"))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(CORRUPTIONS))
def test_corrupted_checkpoint_is_replaced_by_its_verified_store_copy(
    variant, tiny_dir, dataset_dir, mlflow_up, sft_reference, tmp_path
):
    corrupt, expected = CORRUPTIONS[variant]
    run_name = f"sft-corrupt-{variant}"
    out = _copy_stopped_run(sft_reference, tmp_path, run_name)
    corrupt(out / training.CHECKPOINTS / "checkpoint-2")
    cfg = sft_config(tiny_dir, tmp_path, mlflow_up, run_name)
    tracker = tracker_for(mlflow_up, f"faults-{uuid.uuid4().hex[:8]}")

    result = sft.run(cfg, str(dataset_dir), out, tracker, sft_reference["store"])

    assert result["resumed_from"] == str(out / training.CHECKPOINTS / "checkpoint-2")
    assert expected in result["resume_fallback"][0]
    assert "using the verified store copy" in result["resume_fallback"][1]
    assert (
        out / training.CHECKPOINTS / f"{training.CORRUPT_PREFIX}checkpoint-2"
    ).is_dir()  # set aside, not deleted
    tag = tracker.get_run(result["mlflow_run_id"]).data.tags[sft.TAG_RESUME_FALLBACK]
    assert expected in tag
    # The verified copy is the original: step 3 continues exactly as the undisturbed run.
    [step3] = [h for h in result["history"] if "loss" in h]
    assert step3["step"] == STEPS and step3["loss"] == pytest.approx(sft_reference["losses"][STEPS], rel=1e-4)
    assert result["global_step"] == sft_reference["state"]["global_step"]


@pytest.mark.slow
def test_without_a_store_a_corrupted_checkpoint_falls_back_to_the_previous_one(
    tiny_dir, dataset_dir, mlflow_up, sft_reference, tmp_path
):
    out = _copy_stopped_run(sft_reference, tmp_path, None)
    _flip_bytes(out / training.CHECKPOINTS / "checkpoint-2")
    cfg = sft_config(tiny_dir, tmp_path, mlflow_up, "sft-corrupt-no-store")

    result = sft.run(cfg, str(dataset_dir), out)

    assert result["resumed_from"] == str(out / training.CHECKPOINTS / "checkpoint-1")
    assert len(result["resume_fallback"]) == 1 and "sha256 differs" in result["resume_fallback"][0]
    losses = {h["step"]: h["loss"] for h in result["history"] if "loss" in h}
    assert sorted(losses) == [2, 3] and result["global_step"] == STEPS
    assert losses[3] == pytest.approx(sft_reference["losses"][3], rel=1e-4)


def _nan_weights(ckpt: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(ckpt / "model.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.slow
def test_a_nan_weight_that_passes_verification_stops_training_naming_the_step(
    tiny_dir, dataset_dir, mlflow_up, sft_reference, tmp_path
):
    out = _copy_stopped_run(sft_reference, tmp_path, None)
    ckpt = out / training.CHECKPOINTS / "checkpoint-2"
    _nan_weights(ckpt)
    write_manifest(ckpt, training.CHECKPOINT_MANIFEST)  # as if it had been saved that way
    cfg = sft_config(tiny_dir, tmp_path, mlflow_up, "sft-nan-weights")
    with pytest.raises(sft.SFTError, match=r"^step 2: weight \S+ is not finite at the start") as err:
        sft.run(cfg, str(dataset_dir), out)
    assert "\n" not in str(err.value)
    assert not (out / sft.MODEL).exists()


def _poison_after(step: int):
    from transformers import TrainerCallback

    class Poison(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == step:
                import torch

                with torch.no_grad():
                    next(model.parameters()).fill_(float("nan"))

    return Poison()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("save_steps", "expected"),
    [(1, r"^step 1: weight \S+ is not finite before publishing"), (10, r"^step 2: loss is nan")],
    ids=["weight-before-publish", "loss"],
)
def test_nan_mid_training_stops_naming_the_step_and_publishes_nothing_after_it(
    save_steps, expected, tiny_dir, dataset_dir, mlflow_up, sft_reference, tmp_path
):
    run_name = f"sft-nan-{save_steps}"
    cfg = sft_config(tiny_dir, tmp_path, mlflow_up, run_name, f"sft.save_steps={save_steps}")
    store = sft_reference["store"]
    tracker = tracker_for(mlflow_up, f"faults-{uuid.uuid4().hex[:8]}")
    with pytest.raises(sft.SFTError, match=expected):
        sft.run(cfg, str(dataset_dir), tmp_path / "out", tracker, store, callbacks=[_poison_after(1)])
    prefix = store.uri(f"{run_name}/{sft.PHASE}")
    assert training.stored_checkpoints(store, prefix) == {} and not store.exists(f"{prefix}/{sft.MODEL}")
    [phase_run] = tracker.nested_runs()
    assert phase_run.info.status == "FAILED"


def s3_outage(services: LocalServices, down_at: int, up_at: int):
    """A callback that stops S3 after step `down_at` (before that step's checkpoint is published) and starts
    it again after step `up_at` (0: never)."""
    from transformers import TrainerCallback

    class Outage(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == down_at:
                services.stop("s3")
            elif state.global_step == up_at:
                services.start_s3()

    return Outage()


@pytest.mark.slow
def test_s3_down_mid_sft_checkpoints_queue_and_all_reach_the_store(
    tiny_dir, dataset_dir, mlflow_up, sft_reference, tmp_path
):
    cfg = sft_config(tiny_dir, tmp_path, mlflow_up, "sft-s3-outage", *FAST_STORE)
    store = S3ArtifactStore.from_config(cfg.store)
    tracker = tracker_for(mlflow_up, f"faults-{uuid.uuid4().hex[:8]}")
    try:
        result = sft.run(
            cfg, str(dataset_dir), tmp_path / "out", tracker, store, callbacks=[s3_outage(mlflow_up, 1, 2)]
        )
    finally:
        mlflow_up.start_s3()
    assert [c["step"] for c in result["checkpoints"]] == [1, 2, 3]
    assert all(c["uri"] and c["model_id"] for c in result["checkpoints"])  # checkpoint-1 filled in late
    assert sft_state(result, tracker, store, cfg) == sft_reference["state"]


@pytest.mark.slow
def test_s3_down_until_sft_ends_fails_in_one_line_and_a_rerun_publishes_the_rest(
    tiny_dir, dataset_dir, mlflow_up, sft_reference, tmp_path
):
    cfg = sft_config(tiny_dir, tmp_path, mlflow_up, "sft-s3-down", *FAST_STORE, "store.flush_timeout_s=1")
    store = S3ArtifactStore.from_config(cfg.store)
    tracker = tracker_for(mlflow_up, f"faults-{uuid.uuid4().hex[:8]}")
    try:
        with pytest.raises(sft.SFTError, match=r"checkpoint\(s\) not uploaded .*rerun to publish") as err:
            sft.run(
                cfg,
                str(dataset_dir),
                tmp_path / "out",
                tracker,
                store,
                callbacks=[s3_outage(mlflow_up, 1, 0)],
            )
    finally:
        mlflow_up.start_s3()
    assert "\n" not in str(err.value)
    assert tracker.nested_runs()[-1].info.status == "FAILED"
    again = sft.run(cfg, str(dataset_dir), tmp_path / "out", tracker, store)
    assert again["resumed_from"].endswith("checkpoint-3")
    prefix = store.uri(f"{cfg.run_name}/{sft.PHASE}")
    assert sorted(training.stored_checkpoints(store, prefix)) == [1, 2, 3] and store.exists(
        f"{prefix}/{sft.MODEL}"
    )
