"""When the scaffold forces an `ask_expert` call (agent.forced_ask): the paper's two ablations of the
decision to ask, a call every k steps and a call at random steps with a given rate (issue 19).

`forced_steps` is the whole schedule of an episode as a pure function of the config, the instance and
the attempt, so a test (or a reader of a trajectory) can say which calls an episode was configured to
make. The call itself goes through the agent's tool box like the policy's own (protege.agent.agent).
"""

from __future__ import annotations

import random

from protege.config import ForcedAskConfig


def forced_steps(cfg: ForcedAskConfig, instance_id: str, attempt: int, step_limit: int) -> list[int]:
    """The 1-based steps before which a call is forced, up to `step_limit`.

    `interval`: every multiple of every_k_steps. `random`: step s is drawn with probability `rate`, the
    draws coming in step order from a generator seeded by (seed, instance_id, attempt), so the schedule
    does not depend on what the policy does."""
    if cfg.mode == "interval":
        return list(range(cfg.every_k_steps, step_limit + 1, cfg.every_k_steps))
    if cfg.mode == "random":
        rng = random.Random(f"{cfg.seed}:{instance_id}:{attempt}")
        return [step for step in range(1, step_limit + 1) if rng.random() < cfg.rate]
    return []
