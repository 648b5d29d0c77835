"""Planning an RL stage (protege.rl): where it starts, what it resumes, what its KL reference is.

rl1 starts from the SFT model. rl2 given rl1's final model (its `protege_rl.json` names rl1's last
checkpoint and the reference) resumes that checkpoint up to `rl.total_steps`; given any other model it trains
the stage II steps from it. Either stage resumes its own latest checkpoint, local or stored, first. The plan
is computed once (downloads included) and travels to the ranks of a multi-GPU relaunch as JSON.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from protege.config import ProtegeConfig, RewardConfig

PHASES = {1: "rl1", 2: "rl2"}
STATE_FILE = "protege_rl.json"
CHECKPOINTS = "checkpoints"


class RLError(ValueError):
    """A bad RL input (stage, model, task set); the message names it."""


# --------------------------------------------------------------------------------------------------
# Planning a stage: where it starts, what it resumes, what its reference is
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class StagePlan:
    stage: int
    phase: str
    reward: RewardConfig
    init_dir: Path
    """The model the trainer is built from: the KL reference (weights are then replaced on resume)."""
    reference_uri: str
    resume_from: Path | None
    parent_checkpoint_uri: str
    """rl2 starting from rl1: rl1's last checkpoint (its first checkpoint descends from it)."""
    max_steps: int
    carried: dict[str, Any]
    """protege_rl.json of the checkpoint resumed (flat-task bookkeeping of this stage), or {}."""

    @property
    def completed(self) -> bool:
        """The checkpoint to resume already reached max_steps: the stage only publishes its final model (the
        Trainer would otherwise run one more step before noticing)."""
        return self.resume_from is not None and checkpoint_step(self.resume_from) >= self.max_steps


def checkpoint_step(directory: Path) -> int:
    """The optimizer step a Trainer checkpoint was written at."""
    return int(json.loads((Path(directory) / "trainer_state.json").read_text())["global_step"])


def read_state(directory: Path) -> dict[str, Any]:
    path = Path(directory) / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def plan_to_json(plan: StagePlan) -> dict[str, Any]:
    """The plan as launch.json data (the reward config is the stage's, rebuilt from the config)."""
    data = {f.name: getattr(plan, f.name) for f in dataclasses.fields(plan) if f.name != "reward"}
    return {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}


def plan_from_json(cfg: ProtegeConfig, data: dict[str, Any]) -> StagePlan:
    resume = data["resume_from"]
    fields = {**data, "init_dir": Path(data["init_dir"]), "resume_from": Path(resume) if resume else None}
    return StagePlan(reward=stage_reward(cfg, data["stage"]), **fields)


def stage_reward(cfg: ProtegeConfig, stage: int) -> RewardConfig:
    if stage not in PHASES:
        raise RLError(f"rl stage must be 1 or 2, got {stage!r}")
    return cfg.rl.stage1 if stage == 1 else cfg.rl.stage2


def plan_stage(cfg: ProtegeConfig, stage: int, model_uri: str, out_dir: Path, store: Any) -> StagePlan:
    """Stage 1 starts from `model_uri` (the SFT model). Stage 2 given rl1's final model resumes rl1's last
    checkpoint with the SFT reference; given any other model it trains the stage II steps from it."""
    from protege.model import resolve_model
    from protege.training import restore_latest

    reward, phase = stage_reward(cfg, stage), PHASES[stage]
    cache = Path(cfg.model.cache_dir)
    model_dir = resolve_model(model_uri, cache, store, tiny=cfg.model.tiny)
    prefix = store.uri(f"{cfg.run_name}/{phase}") if store is not None else ""
    own = restore_latest(out_dir / CHECKPOINTS, store, prefix)
    carried = read_state(own) if own else {}
    started_from = read_state(model_dir)
    if stage == 2 and started_from.get("stage") == 1:
        reference = started_from["reference_model_uri"]
        parent_uri = started_from["checkpoint_uri"]
        parent_dir = resolve_model(parent_uri, cache, store)
        return StagePlan(
            stage,
            phase,
            reward,
            resolve_model(reference, cache, store, tiny=cfg.model.tiny),
            reference,
            own or parent_dir,
            parent_uri,
            cfg.rl.total_steps,
            carried,
        )
    steps = cfg.rl.stage_one_steps if stage == 1 else cfg.rl.total_steps - cfg.rl.stage_one_steps
    reference = str(model_dir.resolve()) if Path(model_uri).expanduser().is_dir() else model_uri
    return StagePlan(stage, phase, reward, model_dir, reference, own, "", steps, carried)
