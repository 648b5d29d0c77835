"""The copy warm start of the tiny model: the one skill of a pretrained base that its tasks cannot do without.

An agent fixing a bug it has never seen types names it has just read: the symbol from the issue into a grep, the
path from the grep's output into the editor, the line from the file into `old_str`. A pretrained model copies
from its context from the start (induction heads); a randomly initialised 1M-parameter model does not, and a few
hundred SFT steps on a few hundred trajectories never teach it (issue 16: after SFT, the loss on names it had to
copy from its context was 6.0 nats, no better than guessing them from their frequency). So the tiny build
trains that skill first, on the plainest task that asks for it: random ordinary tokens, then a gap, then the
same tokens again; the loss is on the repeat.

Two phases, because the first alone learns a position, not a lookup. NEAR (the first 5/8 of the steps): runs
repeated within 80 tokens of each other, 32 sequences a step; the loss holds at ln(vocab) = 8.3 for about
1,800 steps, then falls within 200 (0.07 by step 2,500, 0.3 s a step on 2 cores). But what it learnt is "look
back by that many tokens": with 200 random tokens before the run the repeat scores 12.5 nats, and with a 400-token
gap 10.9. FAR (the rest, a fresh optimiser): a prefix of up to 200 tokens and gaps of up to 400, 8 sequences a
step; only a lookup by content copies there, and it is learnt in about 100 steps (0.2 by step 150, 0.07 by
1,500), after which the repeat scores 0.2-0.7 nats at every tested offset in sequences of up to 700 tokens.
Neither phase copies in longer sequences (11-14 nats with 800 or 2,000 tokens before the run): a model this size
trained at these lengths does not carry the lookup to the 2,000-3,000 tokens of a trajectory. The build's
manifest records the training losses and `copy_loss_by_context` (the repeat's loss at three sequence lengths).
README, "Learning you can see", says what it did and did not do for the SFT student.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CopyPhase:
    """The shape of one phase's sequences: random prefix, run, random gap, the run again."""

    name: str
    batch: int
    run_tokens: tuple[int, int]
    prefix_tokens: tuple[int, int]
    gap_tokens: tuple[int, int]


RECIPE = 2
"""Part of a warm-started build's cache key (protege.model.tiny_digest): bump when the task or its phases change."""
NEAR = CopyPhase("near", batch=32, run_tokens=(16, 48), prefix_tokens=(0, 32), gap_tokens=(0, 32))
FAR = CopyPhase("far", batch=8, run_tokens=(16, 48), prefix_tokens=(0, 200), gap_tokens=(0, 400))
NEAR_SHARE = 5 / 8
"""Share of the steps spent in NEAR (2,500 of 4,000: NEAR needs about 2,000 to leave chance)."""
LEARNING_RATE = 1e-3
WARMUP_STEPS = 20
LOG_EVERY = 100
PROBES = {"short": (0, 50), "medium": (200, 400), "long": (2000, 50)}
"""Copy-loss probes after training, (prefix, gap) around a 32-token run: up to 130, 680 and 2,100 tokens long."""


def _batch(generator: Any, vocab: int, phase: CopyPhase = NEAR) -> tuple[Any, Any]:
    """Input ids and labels (-100 off the repeat) of one step: prefix, run, gap, run again."""
    import torch

    def draw(bounds: tuple[int, int]) -> int:
        return int(torch.randint(bounds[0], bounds[1] + 1, (1,), generator=generator))

    run, prefix, gap = draw(phase.run_tokens), draw(phase.prefix_tokens), draw(phase.gap_tokens)
    return _sequences(generator, vocab, phase.batch, prefix, run, gap)


def _sequences(generator: Any, vocab: int, batch: int, prefix: int, run: int, gap: int) -> tuple[Any, Any]:
    import torch

    tokens = lambda n: torch.randint(0, vocab, (batch, n), generator=generator)  # noqa: E731
    repeated = tokens(run)
    ids = torch.cat([tokens(prefix), repeated, tokens(gap), repeated], dim=1)
    labels = torch.full_like(ids, -100)
    # The repeat's first token cannot be known before it starts; every later one can be copied.
    labels[:, -run + 1 :] = ids[:, -run + 1 :]
    return ids, labels


def _train(
    model: Any, vocab: int, phase: CopyPhase, steps: int, done: int, total: int, generator: Any, log: Any
) -> list[float]:
    """`steps` steps of `phase` with a fresh optimiser (NEAR's moments fit short sequences only); `done`/`total`
    place them in the whole warm start for the log."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / WARMUP_STEPS))
    losses: list[float] = []
    started = time.monotonic()
    for step in range(1, steps + 1):
        ids, labels = _batch(generator, vocab, phase)
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if (done + step) % LOG_EVERY == 0 or done + step == total:
            elapsed = time.monotonic() - started
            eta = elapsed / step * (total - done - step)
            log(
                f"tiny: copy warm start step {done + step}/{total} ({phase.name}) loss {losses[-1]:.3f}"
                f" ({elapsed:.0f}s, ETA {eta:.0f}s)"
            )
    return losses


def copy_loss(
    model: Any, vocab: int, prefix: int, gap: int, seed: int, batch: int = 4, run: int = 32
) -> float:
    """The model's loss on the repeat of a `run`-token run, `prefix` random tokens in and `gap` tokens on."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    ids, labels = _sequences(generator, vocab, batch, prefix, run, gap)
    with torch.no_grad():
        return float(model(input_ids=ids, labels=labels).loss)


def copy_warm_start(model: Any, vocab: int, steps: int, seed: int, log: Any = print) -> dict[str, Any]:
    """Train `model` in place for `steps` steps (NEAR, then FAR) on the repeat task over token ids [0, vocab);
    returns the mean loss of the first and the last ten steps and the copy loss of each of PROBES. Seeded by
    `seed`, without touching the global RNG."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    near = round(steps * NEAR_SHARE)
    model.train()
    losses = _train(model, vocab, NEAR, near, 0, steps, generator, log)
    losses += _train(model, vocab, FAR, steps - near, near, steps, generator, log)
    model.eval()
    head, tail = losses[: min(10, steps)], losses[-min(10, steps) :]
    longest = getattr(model.config, "max_position_embeddings", None) or math.inf
    probes = {  # a probe longer than the model's positions would measure nothing the model is meant for
        name: round(copy_loss(model, vocab, prefix, gap, seed=seed + 1), 4)
        for name, (prefix, gap) in PROBES.items()
        if prefix + gap + 64 <= longest
    }
    return {
        "steps": steps,
        "near_steps": near,
        "first_loss": round(sum(head) / len(head), 4),
        "last_loss": round(sum(tail) / len(tail), 4),
        "chance_loss": round(math.log(vocab), 4),
        "copy_loss_by_context": probes,
    }
