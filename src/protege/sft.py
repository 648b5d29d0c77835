"""Phase sft (METHOD §4): supervised fine-tuning of the protégé on expert-augmented trajectories.

    protege sft --profile local --dataset .protege/runs/protege/synth/sft      # CPU, tiny model, minutes
    protege sft --profile cluster --dataset s3://protege/protege/synth/sft     # all visible GPUs, ZeRO-3
    protege sft --profile cluster --dataset s3://... --emit-trainjob job.yaml  # multi-node: a TrainJob

What it does, top to bottom:
1. Reads the synth export's trajectories (protege.sft_data: `sft.jsonl` in the one trajectory format, every
   message with its `provenance`, and the card's tool schemas; local path or s3://) and renders each one
   through protege.agent.render, the renderer the agent and RL use (same tool schemas in the same order, same
   history view: `agent.history_view` `full` gives one example per trajectory, `collapsed` one per policy
   turn with the view the agent had), with the base tokenizer's *training* chat template
   (protege.agent.chat_format: the render template plus `{% generation %}` markers; Qwen2.5 and Qwen3
   families). Labels are -100 everywhere except the assistant turns whose provenance is `policy`: the
   protégé's own text (with Qwen3, its `<think>` block), tool calls and `<|im_end|>`. The template's newline
   glue around a turn (`\\n` after `<|im_start|>assistant`, `\\n` after `<|im_end|>`) is context too: at
   inference the prompt supplies the first and generation stops before the second. System prompt, task, tool
   observations and expert guidance are never targets.
2. An example longer than `sft.max_length` tokens is never cut mid-turn: it is dropped (`sft.truncation=drop`)
   or fails the phase (`error`). Every drop is counted, by reason and id, in `sft_data.json`, in the
   dataset card SFT writes beside the model (`dataset_card.json`: the synth card plus an `sft` section, also
   uploaded to `<store>/<run_name>/sft/`), in the run's `data/*` metrics and in the pipeline summary.
3. Trains with trl's `SFTTrainer` on the pre-tokenized examples (full fine-tuning; `sft.lora=true` for a
   peft LoRA adapter). bf16 and activation checkpointing on GPU only; padding-free batches when the
   attention kernel is `flash_attention_2` on GPU (it handles flattened sequences; sdpa on CPU does not).
4. Checkpoints every `sft.save_steps` and at the end into `<out>/checkpoints/checkpoint-N` (weights,
   optimizer, scheduler, RNG, trainer state); each is uploaded to `<store>/<run_name>/sft/checkpoints/`
   with a MANIFEST (sha256 per file) and logged as an MLflow external LoggedModel tagged with the
   dataset digest. A rerun resumes from the latest checkpoint, local or stored, whichever is further.
   The final model (weights + tokenizer, no optimizer) goes to `<store>/<run_name>/sft/model`.
5. Metrics on the MLflow `sft` run: loss, learning_rate, grad_norm, tokens_per_s (all ranks together), and
   `data/*`: records, trained_on, examples, dropped_too_long, dropped_no_targets, target_tokens, max_length
   and uniform_loss (ln of the vocabulary size: the loss of a uniform guess, the line to beat).
   A resumed run with a larger `sft.max_steps` runs at the stretched schedule's rate from its first step.

Faults: each checkpoint gets `checkpoint_manifest.json` (size and sha256 of every file) once the Trainer has
written it; before a resume the checkpoint is verified against it, and a corrupted, truncated or incomplete
one is set aside (`corrupt-checkpoint-N`) for the verified store copy of the same step or the previous
checkpoint, said in the log and in the run's tag `protege.resume_fallback`. A non-finite loss or grad norm
(any step) or weight (at the start and before each checkpoint is published) stops training with
`SFTError` naming the step. MLflow going down does not stop training: the tracker buffers what it logs
and flushes it before the run closes (protege.tracking). Nor does the store: checkpoints queue until it is
back and the final model waits for them (`Lineage`); a rerun publishes local checkpoints the store lacks.

Multi-GPU: with more than one visible GPU and no distributed environment, `run` re-executes itself under
`torchrun --nproc_per_node=<torch.cuda.device_count()>` (protege.launch); the DeepSpeed configs
`protege/deepspeed/zero3.json` (default on clusters) and `zero2.json` carry "auto" values that the HF
Trainer fills from this config; they define no optimizer, so the Trainer's AdamW is used on every device.
Multi-node: `--emit-trainjob FILE` writes a Kubeflow Trainer `TrainJob` (trainer.kubeflow.org/v1alpha1)
running `torchrun -m protege.cli sft ...` on `sft.num_nodes` nodes × `sft.gpus_per_node` GPUs with the
`sft.trainjob_runtime` runtime; apply it with `kubectl apply -f FILE`. `<out>` must then be a shared
(ReadWriteMany) volume, since ZeRO-3 checkpoints hold every rank's optimizer shard.

The chat template is the base model's own (Qwen2.5-Coder as in the paper, or a Qwen3-class model); a
template whose tool calls are not `<tool_call>` JSON is refused before training.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protege.config import ProtegeConfig
from protege.sft_augment import with_renamed_copies
from protege.training import (
    CHECKPOINTS,
    DEEPSPEED_DIR,
    TrainingError,
    _callback_base,
    checkpoint_callback,
    ensure_process_group_env,
    finite_guard,
    on_gpu,
    publish_missing,
    schedule_lr_callback,
    verified_resume,
)

log = logging.getLogger(__name__)

PHASE = "sft"
IGNORE_INDEX = -100
MODEL = "model"
DATA_REPORT = "sft_data.json"
CARD_FILE = "dataset_card.json"
"""The synth card plus SFT's section (trained on, dropped by reason), written beside the model."""
TAG_DATASET_DIGEST = "protege.dataset_digest"
TAG_DATASET_URI = "protege.dataset_uri"
MLFLOW_DIGEST_CHARS = 32
"""Written into each checkpoint after the Trainer's files: their sizes and sha256 (protege.store.write_manifest)."""
TAG_RESUME_FALLBACK = "protege.resume_fallback"
# Keys of the Trainer's logs that go to the tracker; tokens_per_s is computed here.
FORWARDED = ("loss", "learning_rate", "grad_norm", "num_input_tokens_seen", "train_loss", "train_runtime")


# sft's errors are the trainer plumbing's (protege.training): one type for bad data, checkpoints and
# non-finite training alike, a ValueError (the CLI's bad-input exit code).
SFTError = TrainingError


# --------------------------------------------------------------------------------------------------
# Dataset: load the synth export, render, mask, enforce max_length
# --------------------------------------------------------------------------------------------------


@dataclass
class SFTDataset:
    records: list[dict[str, Any]]
    digest: str
    """sha256 of the export's sft.jsonl (the card's `sha256`)."""
    source: str
    """Where it came from (the URI or path given to `run`)."""
    file: Path | None = None
    """The local sft.jsonl (its dataset_card.json lies beside it)."""


def load_dataset(dataset: str, work_dir: Path, store: Any = None) -> SFTDataset:
    """What SFT renders of the synth export's trajectories (protege.sft_data.read_dataset): its `sft.jsonl`,
    or a trajectory file itself; local, or fetched from s3:// into `work_dir`. The digest is the file's
    sha256, checked against the card's."""
    from protege.sft_data import CARD_FILE, DATASET_FILE, DatasetError, read_dataset, sha256_file

    if dataset.startswith("s3://"):
        if store is None:
            raise SFTError(f"dataset {dataset}: an s3:// dataset needs an artifact store")
        path = store.fetch(dataset, work_dir)
    else:
        path = Path(dataset)
        if not path.exists():
            raise SFTError(f"dataset {dataset}: no such file or directory")
    file = path / DATASET_FILE if path.is_dir() else path
    if not file.is_file():
        raise SFTError(f"dataset {dataset}: no {DATASET_FILE} in {path}")
    try:
        records = read_dataset(file)
    except DatasetError as err:
        raise SFTError(str(err)) from None
    digest = sha256_file(file)
    card = file.parent / CARD_FILE
    claimed = json.loads(card.read_text()).get("sha256") if card.is_file() else None
    if claimed and claimed != digest:
        raise SFTError(f"dataset {dataset}: {file.name} has sha256 {digest}, its {CARD_FILE} says {claimed}")
    return SFTDataset(records, digest, dataset, file)


def record_id(record: dict[str, Any]) -> str:
    return str(record["id"])


def _targets(record: dict[str, Any], rid: str) -> list[bool]:
    """Per assistant message, in order: is it a training target (provenance `policy`)?"""
    targets = []
    for index, message in enumerate(record["messages"]):
        provenance = message.get("provenance")
        if provenance is None:
            raise SFTError(
                f"record {rid}, message {index}: no `provenance` (only `policy` turns are targets)"
            )
        if provenance == "policy" and message.get("role") != "assistant":
            raise SFTError(
                f"record {rid}, message {index}: provenance `policy` on role {message.get('role')!r}"
            )
        if message.get("role") == "assistant":
            targets.append(provenance == "policy")
    return targets


def _runs(mask: Sequence[int]) -> list[tuple[int, int]]:
    """[start, end) of every run of 1s."""
    runs, start = [], None
    for i, bit in enumerate([*mask, 0]):
        if bit and start is None:
            start = i
        elif not bit and start is not None:
            runs.append((start, i))
            start = None
    return runs


def render_example(
    tokenizer: Any, template: str, record: dict[str, Any], messages: list[dict[str, Any]] | None = None
) -> dict[str, list[int]]:
    """{"input_ids", "labels"} of one record (or of `messages`, one of its training conversations); labels are
    -100 except on the policy's own turns. The text is protege.agent.render's (the agent's and RL's render):
    the training template differs from the tokenizer's only by its generation markers."""
    rid = record_id(record)
    messages = record["messages"] if messages is None else messages
    targets = _targets({"messages": messages}, rid)
    tools = record.get("tools")
    tools = json.loads(tools) if isinstance(tools, str) else tools
    out = tokenizer.apply_chat_template(
        messages,
        tools=tools or None,
        chat_template=template,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    ids = list(out["input_ids"])
    spans = _runs(out["assistant_masks"])
    if len(spans) != len(targets):
        raise SFTError(
            f"record {rid}: the template marked {len(spans)} assistant spans for {len(targets)} turns"
        )
    newline = tokenizer.encode("\n", add_special_tokens=False)
    labels = [IGNORE_INDEX] * len(ids)
    for (start, end), target in zip(spans, targets, strict=True):
        if not target:
            continue
        if [ids[start]] == newline:  # glue after `<|im_start|>assistant`: the prompt's, not generated
            start += 1
        if end - start > 1 and [ids[end - 1]] == newline and ids[end - 2] == tokenizer.eos_token_id:
            end -= 1  # glue after `<|im_end|>`: generation stops before it
        labels[start:end] = ids[start:end]
    return {"input_ids": ids, "labels": labels}


def build_examples(
    tokenizer: Any,
    template: str,
    records: list[dict[str, Any]],
    max_length: int,
    truncation: str,
    view: str = "full",
    keep_last: int = 5,
) -> tuple[list[dict[str, list[int]]], dict[str, Any]]:
    """Render every record under the history `view` (protege.agent.render.training_conversations: one
    example per trajectory with `full`, one per policy turn with `collapsed`); drop (and report) examples
    longer than `max_length` or without targets. With `truncation == "error"` an over-long example raises
    `SFTError` naming every one. The report counts trajectories and examples, trained and dropped by reason."""
    from protege.agent.render import training_conversations

    kept, too_long, no_targets, trained = [], {}, [], set()
    examples = 0
    for record in records:
        rid = record_id(record)
        conversations = training_conversations(record["messages"], view, keep_last)  # type: ignore[arg-type]
        for turn, messages in enumerate(conversations):
            examples += 1
            name = rid if view == "full" else f"{rid}@turn{turn}"
            example = render_example(tokenizer, template, record, messages)
            if len(example["input_ids"]) > max_length:
                too_long[name] = len(example["input_ids"])
            elif all(label == IGNORE_INDEX for label in example["labels"]):
                no_targets.append(name)
            else:
                kept.append(example)
                trained.add(rid)
    if too_long and truncation == "error":
        listing = ", ".join(f"{rid} ({n} tokens)" for rid, n in too_long.items())
        raise SFTError(f"{len(too_long)} record(s) longer than sft.max_length={max_length}: {listing}")
    if not kept:
        raise SFTError(f"no usable record: {len(too_long)} too long, {len(no_targets)} without policy turns")
    report = {
        "records": len(records),
        "trained_on": len(trained),
        "history_view": view,
        "examples": examples,
        "kept": len(kept),
        "max_length": max_length,
        "dropped_too_long": len(too_long),
        "too_long": too_long,
        "dropped_no_targets": no_targets,
        "tokens": sum(len(e["input_ids"]) for e in kept),
        "target_tokens": sum(sum(x != IGNORE_INDEX for x in e["labels"]) for e in kept),
    }
    if too_long:
        log.warning(
            "sft: dropped %d example(s) longer than %d tokens: %s", len(too_long), max_length, too_long
        )
    return kept, report


def drop_summary(report: dict[str, Any]) -> str:
    """One line for people: "trained on 4/8 trajectories: 4 over max_length 4096" (or "..., none dropped")."""
    head = f"trained on {report['trained_on']}/{report['records']} trajectories"
    drops = []
    if report["dropped_too_long"]:
        drops.append(f"{report['dropped_too_long']} over max_length {report['max_length']}")
    if report["dropped_no_targets"]:
        drops.append(f"{len(report['dropped_no_targets'])} without policy turns")
    return f"{head}: {', '.join(drops)}" if drops else f"{head}, none dropped"


def data_metrics(report: dict[str, Any], vocab_size: int) -> dict[str, float]:
    """The MLflow figures of the data report; `data/uniform_loss` is ln(vocab), a uniform guess's loss."""
    import math

    return {
        "data/records": report["records"],
        "data/trained_on": report["trained_on"],
        "data/examples": report["examples"],
        "data/kept": report["kept"],
        "data/dropped_too_long": report["dropped_too_long"],
        "data/dropped_no_targets": len(report["dropped_no_targets"]),
        "data/target_tokens": report["target_tokens"],
        "data/max_length": report["max_length"],
        "data/uniform_loss": math.log(vocab_size),
    }


def output_vocab_size(model_dir: Path) -> int:
    """The size of the model's output distribution (its config's vocab_size; the tokenizer may hold fewer)."""
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(model_dir).vocab_size)


def write_card(out_dir: Path, dataset_file: Path | None, report: dict[str, Any]) -> Path:
    """The dataset card with SFT's section (what was trained on and every drop, by reason and id), written
    to `<out_dir>/dataset_card.json` beside the model: the synth card's counts stay, SFT's are added."""
    from protege.sft_data import CARD_FILE

    source = dataset_file.parent / CARD_FILE if dataset_file is not None else None
    card = json.loads(source.read_text()) if source is not None and source.is_file() else {}
    card["sft"] = {**report, "summary": drop_summary(report)}
    path = out_dir / CARD_FILE
    path.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return path


# --------------------------------------------------------------------------------------------------
# Callbacks: metrics to the tracker, checkpoints to the store
# --------------------------------------------------------------------------------------------------


class Lineage:
    """Where checkpoints go and what they are linked to; `store`/`tracker` may be None.

    While the store is unreachable (past its own retries) checkpoints queue and are published, in order,
    with the next one; the final model waits for the queue (up to `store.flush_timeout_s`, then SFTError).
    A queued checkpoint that the Trainer's `save_total_limit` deleted meanwhile is skipped with a warning."""

    def __init__(
        self, cfg: ProtegeConfig, data: SFTDataset, store: Any, tracker: Any, run_id: str | None
    ) -> None:
        self.cfg, self.data, self.store, self.tracker, self.run_id = cfg, data, store, tracker, run_id
        self.prefix = store.uri(f"{cfg.run_name}/{PHASE}") if store is not None else ""
        self.queued: list[tuple[Path, str, dict[str, Any]]] = []

    def publish(self, local_dir: Path, name: str, step: int, wait: bool = False) -> dict[str, Any]:
        """Upload `local_dir` to `<prefix>/<name>` and log it as a LoggedModel; returns what was done (a dict
        filled in later when the store is down and the checkpoint queued). `wait`: the final model, so the
        queue must drain and the model id exist now (see Tracker.log_checkpoint)."""
        record: dict[str, Any] = {"step": step, "uri": None, "files": None, "model_id": None}
        self.queued.append((local_dir, name, record))
        self.drain(wait)
        return record

    def drain(self, wait: bool = False) -> None:
        """Publish what is queued, oldest first; without `wait` an unreachable store leaves it queued."""
        import time

        from protege.store import StoreUnavailable

        deadline = time.monotonic() + self.cfg.store.flush_timeout_s
        pause = max(self.cfg.store.retry_backoff_s, 0.1)
        while self.queued:
            local_dir, name, record = self.queued[0]
            if not local_dir.is_dir():
                log.warning("sft: queued %s was deleted (save_total_limit) before the store came back", name)
                self.queued.pop(0)
                continue
            try:
                record.update(self._publish(local_dir, name, record["step"], wait))
            except StoreUnavailable as err:
                reason = str(err).splitlines()[0]
                if wait and time.monotonic() + pause <= deadline:
                    time.sleep(pause)
                    pause = min(pause * 2, max(self.cfg.store.op_backoff_max_s, 0.1))
                    continue
                if wait:
                    raise SFTError(
                        f"{len(self.queued)} checkpoint(s) not uploaded after {self.cfg.store.flush_timeout_s:.0f} s "
                        f"(first: {name}): {reason}; they stay under {local_dir.parent}, rerun to publish"
                    ) from None
                log.warning("sft: store unavailable, %s queued: %s", name, reason)
                return
            self.queued.pop(0)

    def _publish(self, local_dir: Path, name: str, step: int, wait: bool) -> dict[str, Any]:
        uri, files, model_id = str(local_dir.resolve()), None, None
        if self.store is not None:
            uri = f"{self.prefix}/{name}"
            files = len(self.store.upload_dir(local_dir, uri).files)
        if self.tracker is not None and self.run_id:
            tags = {TAG_DATASET_DIGEST: self.data.digest, TAG_DATASET_URI: self.data.source}
            params = {"step": step, "base_model": self.cfg.model.base, "lora": self.cfg.sft.lora}
            model_id = self.tracker.log_checkpoint(
                self.run_id, f"{self.cfg.run_name}-{PHASE}", uri, params, tags, wait=wait
            )
            if name == MODEL:
                self.tracker.link_model(PHASE, uri, model_id)
        return {"step": step, "uri": uri, "files": files, "model_id": model_id}


def log_sft_dataset(tracker: Any, run_id: str, data: Any) -> None:
    """The SFT dataset (`data.source`, `data.digest`) as an input of the sft run and of the pipeline run."""
    # MLflow caps dataset digests at 36 characters; the full sha256 rides along as an input tag.
    mlflow_digest = data.digest[:MLFLOW_DIGEST_CHARS]
    for target in dict.fromkeys([run_id, tracker.parent_run_id]):
        tracker.log_dataset(
            target, "sft-dataset", data.source, digest=mlflow_digest, tags={"sha256": data.digest}
        )


def make_callbacks(lineage: Lineage) -> tuple[Any, Any]:
    """(metrics callback, checkpoint callback); their `.history` / `.published` hold what they saw."""
    import time

    base = _callback_base()

    class MetricsCallback(base):
        """Forwards loss, learning rate, grad norm and tokens/s to the phase run (rank 0 only)."""

        def __init__(self) -> None:
            self.history: list[dict[str, float]] = []
            self._last: tuple[float, int] | None = None

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 (Trainer's signature)
            self._last = (time.monotonic(), state.num_input_tokens_seen)

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if not state.is_world_process_zero or not logs:
                return
            metrics = {k: float(logs[k]) for k in FORWARDED if logs.get(k) is not None}
            now, seen = time.monotonic(), state.num_input_tokens_seen
            if "loss" in metrics and self._last and now > self._last[0]:
                metrics["tokens_per_s"] = (seen - self._last[1]) / (now - self._last[0])
                self._last = (now, seen)
            self.history.append({"step": state.global_step, **metrics})
            if lineage.tracker is not None and lineage.run_id and metrics:
                lineage.tracker.log_metrics(lineage.run_id, metrics, step=state.global_step)

    return MetricsCallback(), checkpoint_callback(lineage)


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def grad_accumulation(cfg: ProtegeConfig, world_size: int) -> int:
    """Micro-steps per optimizer step so that one step sees `sft.global_batch_size` sequences."""
    per_step = cfg.sft.per_device_batch_size * world_size
    if cfg.sft.global_batch_size % per_step:
        raise SFTError(
            f"sft.global_batch_size={cfg.sft.global_batch_size} is not a multiple of sft.per_device_batch_size="
            f"{cfg.sft.per_device_batch_size} × {world_size} device(s)"
        )
    return cfg.sft.global_batch_size // per_step


def training_args(cfg: ProtegeConfig, out_dir: Path, world_size: int, gpu: bool) -> Any:
    """trl.SFTConfig for this phase (labels are pre-built, so TRL's own truncation and masking are off)."""
    import torch
    from trl import SFTConfig

    s = cfg.sft
    padding_free = gpu and cfg.model.attn_implementation == "flash_attention_2"
    dtype = cfg.model.dtype if gpu else "float32"
    return SFTConfig(
        output_dir=str(out_dir / CHECKPOINTS),
        per_device_train_batch_size=s.per_device_batch_size,
        gradient_accumulation_steps=grad_accumulation(cfg, world_size),
        learning_rate=s.learning_rate,
        lr_scheduler_type=s.lr_scheduler,
        warmup_steps=float(s.warmup_ratio),  # a float < 1 is a share of all steps
        num_train_epochs=s.epochs,
        max_steps=s.max_steps,
        bf16=s.bf16 and gpu and torch.cuda.is_bf16_supported(),
        activation_checkpointing=s.gradient_checkpointing and gpu,
        save_strategy="steps",
        save_steps=s.save_steps,
        save_total_limit=s.save_total_limit or None,
        logging_steps=s.logging_steps,
        logging_nan_inf_filter=False,  # a nan loss must reach finite_guard, not be averaged away
        seed=s.seed,
        data_seed=s.seed,
        use_cpu=not gpu,
        report_to="none",  # metrics go through MetricsCallback to protege.tracking
        deepspeed=str(DEEPSPEED_DIR / f"{s.deepspeed}.json") if s.deepspeed else None,
        max_length=None,  # enforced by build_examples, which never cuts a turn
        padding_free=padding_free,
        dataset_kwargs={"skip_prepare_dataset": True},
        include_num_input_tokens_seen="non_padding",
        model_init_kwargs={
            "dtype": dtype,
            "attn_implementation": cfg.model.attn_implementation if gpu else "sdpa",
        },
        disable_tqdm=True,
    )


def _peft_config(cfg: ProtegeConfig) -> Any:
    if not cfg.sft.lora:
        return None
    from peft import LoraConfig

    s = cfg.sft
    return LoraConfig(
        r=s.lora_rank,
        lora_alpha=s.lora_alpha,
        lora_dropout=s.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def prepare_examples(
    cfg: ProtegeConfig, tokenizer: Any, template: str, data: SFTDataset, out_dir: Path, main: bool
) -> tuple[list[dict[str, list[int]]], dict[str, Any]]:
    """The training examples under `agent.history_view` (each trajectory followed by `sft.rename_copies` renamed
    copies, protege.sft_augment) and their report; the main process writes the report (`sft_data.json`) and the
    dataset card with SFT's section (`dataset_card.json`) into `out_dir`."""
    examples, report = build_examples(
        tokenizer,
        template,
        with_renamed_copies(data.records, cfg.sft.rename_copies, cfg.sft.seed),
        cfg.sft.max_length,
        cfg.sft.truncation,
        view=cfg.agent.history_view,
        keep_last=cfg.agent.keep_last_observations,
    )
    report["rename_copies"] = cfg.sft.rename_copies
    if main:
        (out_dir / DATA_REPORT).write_text(json.dumps({**report, "digest": data.digest}, indent=2) + "\n")
        write_card(out_dir, data.file, report)
    return examples, report


def train(
    cfg: ProtegeConfig,
    dataset: str,
    out_dir: Path,
    store: Any,
    tracker: Any,
    run_id: str | None,
    extra_callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Train in this process (one rank of a distributed run, or the only process)."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    from protege.agent.chat_format import chat_format
    from protege.model import resolve_model

    ensure_process_group_env(cfg)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    args = training_args(cfg, out_dir, world_size, on_gpu(cfg))
    with args.main_process_first(local=True):  # one download per node, the other ranks then hit the cache
        model_dir = resolve_model(cfg.model.base, Path(cfg.model.cache_dir), store, tiny=cfg.model.tiny)
        data = load_dataset(dataset, out_dir / "dataset", store)
        resume, fallback = verified_resume(
            out_dir / CHECKPOINTS, store, store.uri(f"{cfg.run_name}/{PHASE}") if store else ""
        )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template = chat_format(tokenizer).training_template
    examples, report = prepare_examples(cfg, tokenizer, template, data, out_dir, args.process_index == 0)
    lineage = Lineage(cfg, data, store, tracker, run_id)
    report_fallback(fallback, tracker, run_id)
    earlier = publish_missing(lineage, out_dir / CHECKPOINTS) if args.process_index == 0 else []
    if tracker is not None and run_id:
        log_sft_dataset(tracker, run_id, data)
        tracker.log_metrics(run_id, data_metrics(report, output_vocab_size(model_dir)))
        tracker.log_artifacts(run_id, out_dir / CARD_FILE)
    metrics_cb, checkpoint_cb = make_callbacks(lineage)
    trainer = SFTTrainer(
        model=str(model_dir),
        args=args,
        train_dataset=Dataset.from_list(examples),
        processing_class=tokenizer,
        peft_config=_peft_config(cfg),
        callbacks=[metrics_cb, finite_guard(), checkpoint_cb, schedule_lr_callback(), *extra_callbacks],
    )
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    trainer.save_model(str(out_dir / MODEL))  # weights + tokenizer (LoRA: the adapter), no optimizer
    final = (
        lineage.publish(out_dir / MODEL, MODEL, trainer.state.global_step, wait=True)
        if args.process_index == 0
        else {}
    )
    if store is not None and args.process_index == 0:  # after the final model: the store has answered
        store.upload_file(out_dir / CARD_FILE, f"{lineage.prefix}/{CARD_FILE}")
    losses = [h["loss"] for h in metrics_cb.history if "loss" in h]
    speeds = [h["tokens_per_s"] for h in metrics_cb.history if "tokens_per_s" in h]
    return {
        "model_dir": str(out_dir / MODEL),
        "model_uri": final.get("uri"),
        "model_id": final.get("model_id"),
        "checkpoints": earlier + checkpoint_cb.published,
        "resumed_from": str(resume) if resume else None,
        "resume_fallback": fallback,
        "global_step": trainer.state.global_step,
        "dataset_digest": data.digest,
        "data": report,
        "history": metrics_cb.history,
        "mlflow_run_id": run_id,
        "metrics": {
            "train_loss": output.training_loss,
            "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None,
            "steps": trainer.state.global_step,
            "tokens_per_s": sum(speeds) / len(speeds) if speeds else None,
        },
    }


def report_fallback(notes: list[str], tracker: Any, run_id: str | None) -> None:
    """Say which checkpoints failed verification before the resume: in the log and as a run tag."""
    for note in notes:
        log.warning("sft: %s", note)
    if notes and tracker is not None and run_id:
        tracker.set_tags(run_id, {TAG_RESUME_FALLBACK: "; ".join(notes)[:5000]})


@contextmanager
def _phase_run(cfg: ProtegeConfig, tracker: Any):
    """The nested `sft` MLflow run (opening the pipeline run if needed), or None without a tracker."""
    if tracker is None:
        yield None
        return
    tracker.ensure_pipeline(cfg.run_name, cfg)
    params = {"base_model": cfg.model.base, **{f"sft.{k}": v for k, v in cfg.sft.model_dump().items()}}
    with tracker.phase(PHASE, params=params) as phase:
        yield phase.run_id


def run(
    cfg: ProtegeConfig,
    dataset: str,
    out_dir: str | Path,
    tracker: Any = None,
    store: Any = None,
    *,
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Fine-tune `cfg.model.base` on the SFT export at `dataset` (path or s3://) into `out_dir`.

    `tracker`: protege.tracking.Tracker (the nested `sft` run gets metrics, the dataset and one LoggedModel
    per checkpoint); `store`: protege.store.S3ArtifactStore (checkpoints and the final model are uploaded,
    an s3:// dataset or base model is fetched). `callbacks`: extra transformers TrainerCallbacks (tests).
    Resumes from the latest local or stored checkpoint. With several visible GPUs and no distributed
    environment it relaunches itself under torchrun (the returned dict is then rank 0's).
    Returns {"model_dir", "model_uri", "model_id", "checkpoints", "resumed_from", "resume_fallback", "global_step",
    "dataset_digest", "data", "history", "metrics", "mlflow_run_id"}.
    """
    from protege import launch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gpus = launch.visible_gpus(cfg)
    if launch.should_relaunch(cfg, gpus):
        return relaunch(cfg, dataset, out_dir, tracker, store, nproc=gpus)
    with _phase_run(cfg, tracker if launch.is_world_main() else None) as run_id:
        return train(cfg, dataset, out_dir, store, tracker, run_id, callbacks)


def relaunch(
    cfg: ProtegeConfig,
    dataset: str,
    out_dir: Path,
    tracker: Any = None,
    store: Any = None,
    nproc: int | None = None,
    runner: Any = None,
) -> dict[str, Any]:
    """Run phase sft under torchrun (the base model is resolved once, here, not by every rank)."""
    import subprocess

    from protege import launch
    from protege.model import resolve_model

    model_dir = resolve_model(cfg.model.base, Path(cfg.model.cache_dir), store, tiny=cfg.model.tiny)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"base": str(model_dir)})})
    entry, args = f"{__name__}:run_launched", {"phase": "sft", "dataset": dataset}
    return launch.launch(cfg, entry, args, out_dir, tracker, store, nproc, runner or subprocess.run)


def run_launched(cfg: ProtegeConfig, launch: dict[str, Any], out_dir: Path, tracker: Any, store: Any) -> dict:
    """One rank of a relaunch (protege.launch calls it)."""
    return run(cfg, launch["dataset"], out_dir, tracker, store)
