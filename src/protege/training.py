"""Trainer plumbing shared by the training phases (sft, rl): checkpoints (local and stored, verified resume,
publishing), the Trainer callbacks both phases install (checkpoint publishing, the non-finite guard, the
resumed learning-rate schedule), devices and the single-process rendezvous DeepSpeed needs."""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Any

from protege.config import ProtegeConfig

log = logging.getLogger(__name__)

DEEPSPEED_DIR = Path(__file__).parent / "deepspeed"
CHECKPOINTS = "checkpoints"
CHECKPOINT_MANIFEST = "checkpoint_manifest.json"
CORRUPT_PREFIX = "corrupt-"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


class TrainingError(ValueError):
    """Training cannot go on (a non-finite loss or weight, an unusable checkpoint); the message says which."""


# --------------------------------------------------------------------------------------------------
# Checkpoints: local and stored, resume from the latest
# --------------------------------------------------------------------------------------------------


def local_checkpoints(ckpt_dir: Path) -> dict[int, Path]:
    """Complete local checkpoints by step (the Trainer writes trainer_state.json after the rest)."""
    found = {}
    for path in Path(ckpt_dir).glob("checkpoint-*"):
        match = _CHECKPOINT_RE.match(path.name)
        if match and (path / "trainer_state.json").is_file():
            found[int(match.group(1))] = path
    return found


def stored_checkpoints(store: Any, prefix: str) -> dict[int, str]:
    """Complete (manifested) checkpoints under `<prefix>/checkpoints/` by step."""
    from protege.store import MANIFEST_NAME

    found = {}
    for uri in store.list(f"{prefix}/{CHECKPOINTS}/"):
        parent, _, name = uri.rpartition("/")
        match = _CHECKPOINT_RE.match(parent.rpartition("/")[2])
        if name == MANIFEST_NAME and match:
            found[int(match.group(1))] = parent
    return found


def restore_latest(ckpt_dir: Path, store: Any = None, prefix: str = "") -> Path | None:
    """The latest verified checkpoint to resume from (see `verified_resume`), or None."""
    return verified_resume(ckpt_dir, store, prefix)[0]


def verified_resume(ckpt_dir: Path, store: Any = None, prefix: str = "") -> tuple[Path | None, list[str]]:
    """The latest checkpoint, local or stored, that verifies against its manifest, and a note for each
    one passed over. Latest first: a local copy that verifies; else the stored copy of that step
    (downloaded and verified by the store); else the step before. A bad local copy is renamed
    `corrupt-checkpoint-N` so neither this nor the Trainer reads it again."""
    from protege.store import StoreError, verify_tree

    ckpt_dir = Path(ckpt_dir)
    local = local_checkpoints(ckpt_dir)
    stored = stored_checkpoints(store, prefix) if store is not None else {}
    notes: list[str] = []
    for step in sorted({*local, *stored}, reverse=True):
        if step in local:
            problem = verify_tree(local[step], CHECKPOINT_MANIFEST)
            if problem is None:
                return local[step], notes
            notes.append(f"checkpoint-{step} (local) failed verification: {problem}")
            _set_aside(local[step])
        if step in stored:
            target = ckpt_dir / f"checkpoint-{step}"
            try:
                _download_checkpoint(store, stored[step], target)
            except StoreError as err:
                notes.append(f"checkpoint-{step} (store) failed verification: {str(err).splitlines()[0]}")
                continue
            if step in local:
                notes.append(f"checkpoint-{step}: using the verified store copy {stored[step]}")
            return target, notes
    return None, notes


def publish_missing(lineage: Any, ckpt_dir: Path) -> list[dict[str, Any]]:
    """Publish the local checkpoints that verify but are not in the store (an earlier run ended while the
    store was down); returns what was published."""
    from protege.store import verify_tree

    if lineage.store is None:
        return []
    stored = stored_checkpoints(lineage.store, lineage.prefix)
    missing = [
        (step, path)
        for step, path in sorted(local_checkpoints(ckpt_dir).items())
        if step not in stored and verify_tree(path, CHECKPOINT_MANIFEST) is None
    ]
    for step, _ in missing:
        log.warning("sft: checkpoint-%d never reached the store; publishing it now", step)
    return [lineage.publish(path, f"{CHECKPOINTS}/checkpoint-{step}", step) for step, path in missing]


def _set_aside(path: Path) -> None:
    target = path.with_name(CORRUPT_PREFIX + path.name)
    if target.exists():
        import shutil

        shutil.rmtree(target)
    path.rename(target)
    log.warning("sft: set aside %s as %s", path, target)


def _download_checkpoint(store: Any, uri: str, target: Path) -> None:
    """Download into a sibling directory and rename it into place only once every object verified."""

    part = target.with_name(target.name + ".download")
    shutil.rmtree(part, ignore_errors=True)
    try:
        store.download_dir(uri, part)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    log.info("sft: resuming from the stored %s", uri)
    part.rename(target)


def _callback_base() -> type:
    from transformers import TrainerCallback

    return TrainerCallback


def checkpoint_callback(lineage: Any) -> Any:
    """A TrainerCallback that hands each checkpoint the Trainer has just written (rank 0) to
    `lineage.publish(local_dir, "checkpoints/checkpoint-N", step)`: upload and LoggedModel. Its `.published`
    holds what publish returned. Serves sft's Lineage and rl's."""

    class CheckpointCallback(_callback_base()):
        def __init__(self) -> None:
            self.published: list[dict[str, Any]] = []

        def on_save(self, args, state, control, **kwargs):  # noqa: ANN001 (Trainer's signature)
            if state.is_world_process_zero:
                from protege.store import write_manifest

                name = f"checkpoint-{state.global_step}"
                path = Path(args.output_dir) / name
                write_manifest(path, CHECKPOINT_MANIFEST)  # last: a checkpoint without it is incomplete
                self.published.append(lineage.publish(path, f"{CHECKPOINTS}/{name}", state.global_step))

    return CheckpointCallback()


def finite_guard() -> Any:
    """A TrainerCallback that stops training with `TrainingError` naming the step when the logged loss or grad
    norm is nan/inf, or when a weight is (checked when training starts and before each checkpoint is
    published, so a diverged model is never published). Put it before the checkpoint callback."""
    import math

    class FiniteGuard(_callback_base()):
        def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
            _check_weights(model, state.global_step, "at the start of training (the loaded weights)")

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            for key in ("loss", "grad_norm"):
                value = (logs or {}).get(key)
                if value is not None and not math.isfinite(float(value)):
                    raise TrainingError(f"step {state.global_step}: {key} is {value}; training stopped")

        def on_save(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
            _check_weights(model, state.global_step, "before publishing the checkpoint")

    return FiniteGuard()


def _check_weights(model: Any, step: int, when: str) -> None:
    import torch

    if model is None:
        return
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.numel() and not torch.isfinite(param).all():
                raise TrainingError(f"step {step}: weight {name} is not finite {when}; training stopped")


def schedule_lr_callback() -> Any:
    """A TrainerCallback that, on a resumed run, sets every optimizer group's learning rate to the schedule's
    value at the resumed step before the first step runs. The Trainer restores the optimizer's saved rate,
    which at the end of a finished cosine schedule is 0: a rerun with a larger `sft.max_steps` (a schedule
    stretched over more steps) would otherwise take its first step at that stale rate."""

    class ScheduleLR(_callback_base()):
        def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):  # noqa: ANN001
            scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate may wrap it
            lambdas = getattr(scheduler, "lr_lambdas", None)
            if state.global_step == 0 or optimizer is None or not lambdas:
                return
            rates = [
                base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, lambdas, strict=True)
            ]
            for group, rate in zip(optimizer.param_groups, rates, strict=True):
                group["lr"] = rate
            scheduler._last_lr = rates  # what get_last_lr() and the Trainer's logs report

    return ScheduleLR()


# --------------------------------------------------------------------------------------------------
# Devices and the process group
# --------------------------------------------------------------------------------------------------


def on_gpu(cfg: ProtegeConfig) -> bool:
    import torch

    return cfg.device != "cpu" and torch.cuda.is_available()


def free_port() -> int:
    """A currently free loopback port (a lone process's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_process_group_env(cfg: ProtegeConfig) -> None:
    # DeepSpeed always initialises torch.distributed; a lone process (one GPU, or CPU) needs a rendezvous.
    if cfg.sft.deepspeed and "WORLD_SIZE" not in os.environ:
        defaults = {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()),
            "RANK": "0",
            "WORLD_SIZE": "1",
        }
        for key, value in {**defaults, "LOCAL_RANK": "0"}.items():
            os.environ.setdefault(key, value)
