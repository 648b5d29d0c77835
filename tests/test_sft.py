"""Phase sft: loss masks (only the protégé's own turns are targets), max-length policy, local training on
the tiny model with checkpoints in a real s3rver store and LoggedModels on a real MLflow server, exact
resume, the torchrun relaunch and the TrainJob manifest, and DeepSpeed ZeRO-3 on CPU (slow)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

import protege.config as config_module
import protege.model as model_module
from protege import launch as sft_launch
from protege import sft
from protege.config import TinyModelConfig, load_config
from protege.trajectory import Message, ToolCall, Trajectory

TINY = TinyModelConfig(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"The {name} tool.",
            "parameters": {"type": "object", "properties": {arg: {"type": "string"}}, "required": [arg]},
        },
    }
    for name, arg in (("bash", "command"), ("ask_expert", "question"))
]
SYSTEM, TASK, OBSERVATION = (
    "SYSTEM-PROMPT for the agent",
    "TASK-TEXT: tests fail in calc.py",
    "TOOL-OBSERVATION",
)
GUIDANCE = "<expert_llm_guidance>EXPERT-GUIDANCE: add subtracts</expert_llm_guidance>"


def _call(name: str, **arguments: str) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def chat_record(index: int, extra_turns: int = 0) -> dict:
    """A synth-export record: system, task, bash, observation, ask_expert, guidance, fix, final answer."""
    policy = lambda content, *calls: {  # noqa: E731
        "role": "assistant",
        "content": content,
        "provenance": "policy",
        "tool_calls": list(calls),
    }
    messages = [
        {"role": "system", "content": SYSTEM, "provenance": "system"},
        {"role": "user", "content": f"{TASK} #{index}", "provenance": "task"},
        policy("Look at the file.", _call("bash", command=f"cat calc{index}.py")),
        {
            "role": "tool",
            "name": "bash",
            "content": f"{OBSERVATION} def add(a, b): return a - b",
            "provenance": "tool",
        },
        policy("", _call("ask_expert", question="Why does add fail?")),
        {"role": "tool", "name": "ask_expert", "content": GUIDANCE, "provenance": "expert"},
    ]
    for turn in range(extra_turns):
        messages.append(policy(f"Checking again {turn}.", _call("bash", command="pytest -q")))
        messages.append(
            {"role": "tool", "name": "bash", "content": f"{OBSERVATION} {turn} " * 20, "provenance": "tool"}
        )
    messages.append(policy("Fix it.", _call("bash", command=f"sed -i 's/a - b/a + b/' calc{index}.py")))
    messages.append({"role": "tool", "name": "bash", "content": f"{OBSERVATION} ok", "provenance": "tool"})
    messages.append(policy("Fixed: add now adds."))
    return {"id": f"traj-{index}", "messages": messages, "tools": TOOLS}


def build_tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model (TINY) with a tokenizer trained on two of protege's own modules."""
    corpus = tmp_path_factory.mktemp("corpus")
    for module in (model_module, config_module):
        shutil.copy(module.__file__, corpus / Path(module.__file__).name)
    return model_module.build_tiny_model(TINY, tmp_path_factory.mktemp("tiny") / "model", [corpus])


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def tokenizer(tiny_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def template(tokenizer) -> str:
    from trl.chat_template_utils import get_training_chat_template

    return get_training_chat_template(tokenizer)


def as_trajectory(record: dict) -> Trajectory:
    """A chat record as the trajectory synth would have recorded (SFT reads trajectories)."""
    messages = []
    for m in record["messages"]:
        functions = [call["function"] for call in m.get("tool_calls", [])]
        calls = [
            ToolCall(id=f"call_{i}", name=f["name"], arguments=f["arguments"])
            for i, f in enumerate(functions)
        ]
        extra = {"name": m["name"]} if "name" in m else {}
        messages.append(
            Message(
                role=m["role"], provenance=m["provenance"], content=m["content"], tool_calls=calls, **extra
            )
        )
    return Trajectory(instance_id=record["id"], messages=messages, status="submitted")


def write_dataset(root: Path, records: list[dict]) -> Path:
    """The synth export's layout (protege.sft_data): sft.jsonl of trajectories plus dataset_card.json with
    its sha256 and the tool schemas."""
    from protege.sft_data import CARD_FILE, DATASET_FILE, sha256_file

    root.mkdir(parents=True, exist_ok=True)
    (root / DATASET_FILE).write_text("".join(as_trajectory(r).model_dump_json() + "\n" for r in records))
    card = {
        "format": "protege-trajectory-v1",
        "records": len(records),
        "sha256": sha256_file(root / DATASET_FILE),
        "tools": TOOLS,
    }
    (root / CARD_FILE).write_text(json.dumps(card))
    return root


def sft_cfg(tiny_dir: Path, tmp_path: Path, *overrides: str):
    base = [
        f"model.base={tiny_dir}",
        f"model.cache_dir={tmp_path / 'cache'}",
        "run_name=sft-test",
        "sft.learning_rate=0.003",
        "sft.warmup_ratio=0",
        "sft.lr_scheduler=constant",
        "sft.global_batch_size=4",
        "sft.per_device_batch_size=2",
        "sft.max_length=1024",
        "sft.save_total_limit=0",
    ]
    return load_config("local", overrides=base + list(overrides))


def expected_target(message: dict) -> str:
    """What the protégé generates for one of its turns: text, tool calls, end of turn."""
    text = message["content"]
    for call in message.get("tool_calls", []):
        function = call["function"]
        arguments = json.dumps(function["arguments"], ensure_ascii=False)
        text += f'\n<tool_call>\n{{"name": "{function["name"]}", "arguments": {arguments}}}\n</tool_call>'
    return text.lstrip("\n") + "<|im_end|>"


def target_runs(example: dict) -> list[list[int]]:
    runs, current = [], []
    for token, label in zip(example["input_ids"], example["labels"], strict=True):
        if label != sft.IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


# --------------------------------------------------------------------------------------------------
# Loss masks and the max-length policy
# --------------------------------------------------------------------------------------------------


def test_every_target_token_is_protege_text(tokenizer, template):
    record = chat_record(0, extra_turns=1)
    example = sft.render_example(tokenizer, template, record)
    decoded = [tokenizer.decode(run) for run in target_runs(example)]
    policy = [m for m in record["messages"] if m["provenance"] == "policy"]
    assert decoded == [expected_target(m) for m in policy]
    targets = "".join(decoded)
    for context in (
        SYSTEM,
        TASK,
        OBSERVATION,
        GUIDANCE,
        "EXPERT-GUIDANCE",
        "<expert_llm_guidance>",
        "<tool_response>",
    ):
        assert context not in targets
    # ... while all of it is in the rendered input the model conditions on.
    rendered = tokenizer.decode(example["input_ids"])
    assert all(text in rendered for text in (SYSTEM, TASK, OBSERVATION, GUIDANCE))


def test_bad_provenance_is_named(tokenizer, template):
    record = chat_record(1)
    del record["messages"][3]["provenance"]
    with pytest.raises(sft.SFTError, match=r"record traj-1, message 3: no `provenance`"):
        sft.render_example(tokenizer, template, record)
    record = chat_record(2)
    record["messages"][5]["provenance"] = "policy"  # expert guidance claimed as the protégé's own
    with pytest.raises(sft.SFTError, match=r"record traj-2, message 5: provenance `policy` on role 'tool'"):
        sft.render_example(tokenizer, template, record)


def test_overlong_records_are_dropped_and_reported_or_fail(tokenizer, template):
    records = [chat_record(0), chat_record(1, extra_turns=6), chat_record(2)]
    lengths = [len(sft.render_example(tokenizer, template, r)["input_ids"]) for r in records]
    limit = max(lengths[0], lengths[2])
    assert lengths[1] > limit
    kept, report = sft.build_examples(tokenizer, template, records, limit, "drop")
    assert len(kept) == 2 and [len(e["input_ids"]) for e in kept] == [lengths[0], lengths[2]]
    assert report["dropped_too_long"] == 1 and report["too_long"] == {"traj-1": lengths[1]}
    with pytest.raises(
        sft.SFTError, match=rf"1 record\(s\) longer than sft.max_length={limit}: traj-1 \({lengths[1]}"
    ):
        sft.build_examples(tokenizer, template, records, limit, "error")


def test_every_drop_is_named_in_the_dataset_card_sft_writes(tokenizer, template, tmp_path):
    records = [chat_record(0), chat_record(1, extra_turns=6), chat_record(2)]
    limit = len(sft.render_example(tokenizer, template, records[0])["input_ids"]) + 8
    _, report = sft.build_examples(tokenizer, template, records, limit, "drop")
    assert (report["records"], report["trained_on"], report["examples"]) == (3, 2, 3)
    source = write_dataset(tmp_path / "ds", records)
    card = json.loads(sft.write_card(tmp_path, source / "sft.jsonl", report).read_text())
    assert card["records"] == 3 and card["sft"]["too_long"] == {"traj-1": report["too_long"]["traj-1"]}
    assert card["sft"]["summary"] == f"trained on 2/3 trajectories: 1 over max_length {limit}"


def test_collapsed_view_trains_one_example_per_policy_turn(tokenizer, template):
    record = chat_record(0, extra_turns=3)
    turns = sum(m["provenance"] == "policy" for m in record["messages"])
    examples, report = sft.build_examples(tokenizer, template, [record], 10**6, "drop", "collapsed", 1)
    assert (report["examples"], report["kept"], report["trained_on"]) == (turns, turns, 1)
    full = sft.render_example(tokenizer, template, record)
    assert [len(target_runs(e)) for e in examples] == [1] * turns  # each example: its own turn only
    assert [tokenizer.decode(target_runs(e)[0]) for e in examples] == [
        tokenizer.decode(run) for run in target_runs(full)
    ]
    assert "Old environment output" in tokenizer.decode(examples[-1]["input_ids"])


def test_renamed_copies_are_trained_beside_their_originals(tiny_dir, tokenizer, template, tmp_path):
    records = [chat_record(0), chat_record(1)]
    for index, record in enumerate(records):  # a grep for a symbol: a name of the episode, renamed in copies
        record["messages"][2]["tool_calls"][0]["function"]["arguments"]["command"] = (
            f"git grep -n adder{index}"
        )
    data = sft.SFTDataset(records, "digest", "test")
    cfg = sft_cfg(tiny_dir, tmp_path, "sft.rename_copies=2")
    examples, report = sft.prepare_examples(cfg, tokenizer, template, data, tmp_path, main=True)
    assert (len(examples), report["records"], report["rename_copies"]) == (6, 6, 2)
    decoded = [tokenizer.decode(e["input_ids"]) for e in examples]
    assert "adder0" in decoded[0] and not any("adder0" in text for text in decoded[1:3])
    assert "adder1" in decoded[3] and not any("adder1" in text for text in decoded[4:6])
    assert json.loads((tmp_path / sft.DATA_REPORT).read_text())["rename_copies"] == 2


def test_dataset_digest_is_checked_against_the_card(tmp_path: Path):
    root = write_dataset(tmp_path / "ds", [chat_record(0)])
    data = sft.load_dataset(str(root), tmp_path / "work")
    assert data.digest == json.loads((root / "dataset_card.json").read_text())["sha256"]
    (root / "sft.jsonl").write_text(as_trajectory(chat_record(1)).model_dump_json() + "\n")
    with pytest.raises(sft.SFTError, match="dataset_card.json says"):
        sft.load_dataset(str(root), tmp_path / "work")
    with pytest.raises(sft.SFTError, match="no such file"):
        sft.load_dataset(str(tmp_path / "missing"), tmp_path / "work")


# --------------------------------------------------------------------------------------------------
# Training: loss goes down, checkpoints in the store, LoggedModels linked to the dataset, exact resume
# --------------------------------------------------------------------------------------------------

STEPS, SAVE_STEPS = 3, 2
TRAIN_ARGS = ("sft.global_batch_size=2", "sft.per_device_batch_size=2", f"sft.save_steps={SAVE_STEPS}")


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("dataset"), [chat_record(i) for i in range(6)])


@pytest.fixture(scope="module")
def module_store(s3_server):
    import uuid

    from protege.store import S3ArtifactStore

    store = S3ArtifactStore.from_config(
        s3_server.store_config().model_copy(update={"bucket": f"sft-{uuid.uuid4().hex[:10]}"})
    )
    store.ensure_bucket()
    return store


@pytest.fixture(scope="module")
def full_run(tiny_dir, dataset_dir, module_store, mlflow_server, tmp_path_factory):
    """An uninterrupted run of STEPS steps, tracked and uploaded."""
    import uuid

    from protege.config import TrackingConfig
    from protege.tracking import Tracker

    tmp = tmp_path_factory.mktemp("full")
    tracker = Tracker(mlflow_server.tracking_config(TrackingConfig(experiment=f"sft-{uuid.uuid4().hex[:8]}")))
    cfg = sft_cfg(tiny_dir, tmp, f"sft.max_steps={STEPS}", *TRAIN_ARGS)
    return sft.run(cfg, str(dataset_dir), tmp / "out", tracker, module_store), tracker


def test_local_sft_lowers_the_loss_and_publishes_checkpoints(full_run, module_store, dataset_dir):
    from protege.store import MANIFEST_NAME
    from protege.tracking import TAG_CHECKPOINT_URI

    result, tracker = full_run
    digest = json.loads((dataset_dir / "dataset_card.json").read_text())["sha256"]
    assert result["global_step"] == STEPS and result["dataset_digest"] == digest
    assert result["metrics"]["loss_last"] < result["metrics"]["loss_first"]
    assert [h["step"] for h in result["history"] if "loss" in h] == list(range(1, STEPS + 1))
    assert all(h["tokens_per_s"] > 0 and h["grad_norm"] > 0 for h in result["history"] if "loss" in h)
    # Checkpoints every SAVE_STEPS and at the end, each complete in the store with its manifest.
    prefix = module_store.uri("sft-test/sft")
    assert [c["step"] for c in result["checkpoints"]] == [SAVE_STEPS, STEPS]
    final = result["checkpoints"][-1]
    assert final["uri"] == f"{prefix}/checkpoints/checkpoint-{STEPS}"
    manifest = {e.path for e in module_store.read_manifest(final["uri"]).files}
    assert {
        "model.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "trainer_state.json",
        "tokenizer.json",
    } <= manifest
    assert f"{final['uri']}/{MANIFEST_NAME}" in module_store.list(final["uri"])
    assert result["model_uri"] == f"{prefix}/model" and module_store.exists(result["model_uri"])
    # MLflow: one LoggedModel per checkpoint plus the final model, each linked to the dataset digest.
    models = tracker.logged_models(result["mlflow_run_id"])
    assert {m.tags[TAG_CHECKPOINT_URI] for m in models} == {c["uri"] for c in result["checkpoints"]} | {
        result["model_uri"]
    }
    assert {m.tags[sft.TAG_DATASET_DIGEST] for m in models} == {digest}
    [dataset_input] = tracker.dataset_inputs(result["mlflow_run_id"])
    assert dataset_input.dataset.digest == digest[: sft.MLFLOW_DIGEST_CHARS]
    assert {t.key: t.value for t in dataset_input.tags}["sha256"] == digest
    run = tracker.get_run(result["mlflow_run_id"])
    assert {"loss", "learning_rate", "grad_norm", "tokens_per_s"} <= set(run.data.metrics)


def test_the_sft_run_counts_its_data_in_mlflow_and_stores_the_card(full_run, module_store):
    import math

    result, tracker = full_run
    metrics = tracker.get_run(result["mlflow_run_id"]).data.metrics
    assert (metrics["data/records"], metrics["data/trained_on"], metrics["data/dropped_too_long"]) == (
        6,
        6,
        0,
    )
    # ln of the model's output vocabulary (the demo's tokenizer holds fewer tokens than its model predicts)
    assert metrics["data/uniform_loss"] == pytest.approx(math.log(TINY.vocab_size))
    assert module_store.exists(module_store.uri("sft-test/sft/dataset_card.json"))
    assert result["data"]["trained_on"] == 6


def _stop_after(steps: int):
    from transformers import TrainerCallback

    class StopAfter(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= steps:
                control.should_training_stop = True

    return StopAfter()


def _resume_probe():
    """Records the optimizer state and step the resumed run starts from, and the steps it then logs."""
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        start_step: int | None = None
        optimizer_state: dict | None = None

        def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
            if self.start_step is None:
                self.start_step = state.global_step
                self.optimizer_state = copy.deepcopy(optimizer.state_dict())  # live tensors otherwise

    return Probe()


def test_resume_from_the_stored_checkpoint_continues_exactly(
    full_run, tiny_dir, dataset_dir, module_store, tmp_path
):
    import torch

    cfg = sft_cfg(tiny_dir, tmp_path, f"sft.max_steps={STEPS}", "run_name=sft-resume", *TRAIN_ARGS)
    first = sft.run(
        cfg, str(dataset_dir), tmp_path / "first", store=module_store, callbacks=[_stop_after(SAVE_STEPS)]
    )
    assert first["global_step"] == SAVE_STEPS and first["checkpoints"][-1]["step"] == SAVE_STEPS
    # A fresh machine: nothing local, the checkpoint comes back from the store.
    probe = _resume_probe()
    resumed = sft.run(cfg, str(dataset_dir), tmp_path / "second", store=module_store, callbacks=[probe])
    assert resumed["resumed_from"] == str(tmp_path / "second" / "checkpoints" / f"checkpoint-{SAVE_STEPS}")
    assert probe.start_step == SAVE_STEPS and resumed["global_step"] == STEPS
    assert [h["step"] for h in resumed["history"] if "loss" in h] == [SAVE_STEPS + 1]
    saved = torch.load(Path(resumed["resumed_from"]) / "optimizer.pt", weights_only=False)["state"]
    assert saved and set(saved) == set(probe.optimizer_state["state"])
    for index, tensors in saved.items():
        assert probe.optimizer_state["state"][index]["step"] == tensors["step"] == SAVE_STEPS
        assert torch.equal(probe.optimizer_state["state"][index]["exp_avg"], tensors["exp_avg"])
        assert torch.equal(probe.optimizer_state["state"][index]["exp_avg_sq"], tensors["exp_avg_sq"])
    # Weights, optimizer, scheduler, RNG and data order restored: step 3 matches the uninterrupted run.
    uninterrupted = {h["step"]: h for h in full_run[0]["history"] if "loss" in h}
    step3 = next(h for h in resumed["history"] if "loss" in h)
    assert step3["loss"] == pytest.approx(uninterrupted[STEPS]["loss"], rel=1e-4)
    assert step3["learning_rate"] == pytest.approx(uninterrupted[STEPS]["learning_rate"])


def _lr_probe():
    """Records the optimizer's learning rate as each step begins (the rate that step runs at)."""
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        def __init__(self) -> None:
            self.rates: dict[int, float] = {}

        def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
            self.rates[state.global_step + 1] = optimizer.param_groups[0]["lr"]

    return Probe()


def test_resume_with_more_steps_runs_at_the_stretched_schedules_rate(tiny_dir, dataset_dir, tmp_path):
    import math

    lr, base = 0.003, (*TRAIN_ARGS, "sft.lr_scheduler=cosine", "run_name=sft-stretch")
    short = sft_cfg(tiny_dir, tmp_path, "sft.max_steps=2", *base)
    sft.run(short, str(dataset_dir), tmp_path / "out")  # a finished cosine schedule: its last rate is 0
    probe = _lr_probe()
    longer = sft_cfg(tiny_dir, tmp_path, "sft.max_steps=4", *base)
    resumed = sft.run(longer, str(dataset_dir), tmp_path / "out", callbacks=[probe])
    assert resumed["resumed_from"] and resumed["global_step"] == 4
    # Step 3 of a 4-step cosine runs at half the peak, not at the stale 0 of the 2-step schedule.
    assert probe.rates[3] == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * 2 / 4)))
    assert probe.rates[4] == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * 3 / 4)))


# --------------------------------------------------------------------------------------------------
# Launching: torchrun on one node (API boundary: no GPUs here), a TrainJob for several nodes
# --------------------------------------------------------------------------------------------------


def test_relaunch_runs_torchrun_on_every_gpu_and_returns_rank_zero_result(tiny_dir, tmp_path, monkeypatch):
    for name in ("LOCAL_RANK", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    cfg = sft_cfg(tiny_dir, tmp_path, "store.access_key=SECRET-A", "store.secret_key=SECRET-B")
    assert sft_launch.should_relaunch(cfg, gpus=4) and not sft_launch.should_relaunch(cfg, gpus=1)
    calls = []

    def fake_torchrun(command, env, check):
        calls.append((command, env))
        (tmp_path / "out" / sft_launch.RESULT_FILE).write_text(json.dumps({"global_step": 7}))
        return type("Completed", (), {"returncode": 0})()

    (tmp_path / "out").mkdir()
    result = sft.relaunch(cfg, "s3://b/sft", tmp_path / "out", nproc=4, runner=fake_torchrun)
    assert result == {"global_step": 7}
    [(command, env)] = calls
    assert command[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m"]
    assert command[6:] == ["protege.launch", str(tmp_path / "out" / sft_launch.LAUNCH_FILE)]
    assert env["AWS_ACCESS_KEY_ID"] == "SECRET-A" and env["AWS_SECRET_ACCESS_KEY"] == "SECRET-B"
    launch = (tmp_path / "out" / sft_launch.LAUNCH_FILE).read_text()
    assert "SECRET" not in launch and json.loads(launch)["config"]["model"]["base"] == str(tiny_dir)
    monkeypatch.setenv("LOCAL_RANK", "0")  # already a rank: never relaunch again
    assert not sft_launch.should_relaunch(cfg, gpus=4)


def test_relaunch_failure_names_the_command(tiny_dir, tmp_path):
    cfg = sft_cfg(tiny_dir, tmp_path)
    failed = lambda command, env, check: type("Completed", (), {"returncode": 3})()  # noqa: E731
    with pytest.raises(sft_launch.LaunchError, match="torch.distributed.run.*exited with 3"):
        sft.relaunch(cfg, "data", tmp_path, nproc=2, runner=failed)


def test_emit_trainjob_writes_a_multi_node_manifest(tmp_path):
    import yaml

    from protege.cli import main

    out = tmp_path / "job.yaml"
    assert (
        main(
            [
                "sft",
                "--profile",
                "cluster",
                "--dataset",
                "s3://protege/x/synth",
                "--emit-trainjob",
                str(out),
                "sft.num_nodes=4",
                "sft.gpus_per_node=8",
            ]
        )
        == 0
    )
    job = yaml.safe_load(out.read_text())
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == 4 and trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == 8
    assert trainer["command"] == [
        "torchrun",
        "-m",
        "protege.cli",
        "sft",
        "--profile",
        "cluster",
        "--dataset",
        "s3://protege/x/synth",
        "sft.num_nodes=4",
        "sft.gpus_per_node=8",
    ]
    assert job["spec"]["runtimeRef"]["name"] == "torch-distributed"
    secrets = [e for e in trainer["env"] if "valueFrom" in e]
    assert {e["name"] for e in secrets} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_global_batch_must_split_over_devices(tiny_dir, tmp_path):
    cfg = sft_cfg(tiny_dir, tmp_path, "sft.global_batch_size=6", "sft.per_device_batch_size=2")
    assert sft.grad_accumulation(cfg, 1) == 3
    with pytest.raises(sft.SFTError, match=r"global_batch_size=6 is not a multiple of .*=2 × 2 device"):
        sft.grad_accumulation(cfg, 2)


@pytest.mark.slow
def test_deepspeed_zero3_two_steps_on_cpu(tiny_dir, dataset_dir, tmp_path, monkeypatch):
    """ZeRO-3 with the shipped config, one process on the gloo backend.

    DeepSpeed JIT-compiles its CPU shared-memory op (~30 s) into TORCH_EXTENSIONS_DIR under a lock file that a
    killed run leaves behind, and every later build then waits on it forever (a CI run hung here for an hour).
    The build goes to this test's own directory, so no earlier run can block it.
    """
    from protege.services import free_port

    env = {
        "TORCH_EXTENSIONS_DIR": str(tmp_path / "torch_extensions"),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cfg = sft_cfg(tiny_dir, tmp_path, "sft.deepspeed=zero3", "sft.max_steps=2", *TRAIN_ARGS)
    result = sft.run(cfg, str(dataset_dir), tmp_path / "out")
    assert result["global_step"] == 2 and all(h["loss"] > 0 for h in result["history"] if "loss" in h)
    checkpoint = tmp_path / "out" / "checkpoints" / "checkpoint-2"
    assert (checkpoint / "model.safetensors").is_file() and any(
        checkpoint.glob("global_step2/*optim_states.pt")
    )


def test_trainjob_reads_the_pipelines_s3_secret_and_runs_the_pipelines_trainer_image():
    import yaml

    from protege import launch
    from protege.config import load_config

    cfg = load_config("cluster")
    job = launch.trainjob_manifest(cfg, "s3://protege/x/synth", "cluster", [])
    trainer = job["spec"]["trainer"]
    assert trainer["image"] == cfg.pipeline.trainer_image
    manifests = Path(__file__).resolve().parents[1] / "manifests" / "base" / "secrets.yaml"
    defined = {d["metadata"]["name"]: set(d["stringData"]) for d in yaml.safe_load_all(manifests.read_text())}
    refs = [e["valueFrom"]["secretKeyRef"] for e in trainer["env"] if "valueFrom" in e]
    assert refs and all(ref["key"] in defined.get(ref["name"], set()) for ref in refs), (refs, defined)
    pinned = load_config("cluster", None, ["sft.trainjob_image=registry.local/trainer@sha256:" + "0" * 64])
    assert launch.trainjob_manifest(pinned, "s3://p/d", "cluster", [])["spec"]["trainer"]["image"].endswith(
        "0" * 64
    )
