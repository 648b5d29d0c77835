"""The copy warm start of the tiny model: the one skill of a pretrained base that its tasks cannot do without.

An agent fixing a bug it has never seen types names it has just read: the symbol from the issue into a grep, the
path from the grep's output into the editor, the line from the file into `old_str`. A pretrained model copies
from its context from the start (induction heads); a randomly initialised 1M-parameter model does not, and a few
hundred SFT steps on a few hundred trajectories never teach it (issue 16: after SFT, the loss on names it had to
copy from its context was 6.0 nats, no better than guessing them from their frequency). So the tiny build
trains that skill first, on the plainest task that asks for it: random ordinary tokens, then a gap, then the
same tokens again; the loss is on the repeat.

Three phases, because each one alone learns less than it seems (measured at the `learn` profile's tiny shape,
vocab 4096, on 2 cores). NEAR (half the steps; runs repeated within 80 tokens, 32 sequences a step, 0.3 s): the
loss holds at ln(vocab) = 8.3 for about 1,800 steps, then falls within 200 (0.07 by step 2,500); but what it
learns is "look back by that many tokens": with 200 random tokens before the run the repeat scores 12.5 nats, with
a 400-token gap 10.9. FAR (0.3; a prefix of up to 200 tokens and gaps of up to 400, 8 a step, 0.3 s): only a
lookup by content copies there, and it is learnt in about 100 steps (0.07 by 1,500); the repeat then scores
0.2-0.7 nats in sequences of up to 700 tokens, and 11-14 in longer ones. LONG (0.2; 4 a step, lr 2e-4, the
prefix's bound growing to 2,500 tokens over 80% of it, up to 0.6 s a step): the lookup carries to the 2,000-3,000
tokens of a trajectory (0.1-1.3 nats with 800 or 2,000 tokens before the run). Long sequences all at once (no
ramp, lr 5e-4) broke the lookup instead (8.5 nats, chance); a ramp from 600 tokens at lr 1e-4 had not learnt it
after 250 steps. These figures come from the three phases run as
separate trainings (2,500, 1,500 and 1,000 steps, 28 min; FAR and LONG without the 20-step warm-up each phase
has here). This module's own 5,000-step build (`copy_warmup_steps: 5000`, the learn profile's) took 2,065 s on 2
cores, its first minutes shared with task generation; it leaves chance between steps 1,800 and 2,000, and its
probes read 0.45 / 0.52 / 1.27 nats (short / medium / long), the same in two builds on two machines. The manifest
records the training losses and `copy_loss_by_context`, the repeat's loss at three sequence lengths, so a build
shows whether it copies.
README, "Learning you can see", says what it did and did not do for the SFT student.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CopyPhase:
    """One phase of the warm start: its share of the steps, learning rate, and the shape of its sequences
    (random prefix, run, random gap, the run again; each length drawn per step: run and gap within their bounds,
    the prefix from 0 to its upper bound)."""

    name: str
    share: float
    learning_rate: float
    batch: int
    run_tokens: tuple[int, int]
    prefix_tokens: tuple[int, int]
    gap_tokens: tuple[int, int]
    prefix_ramp: float = 0.0
    """> 0: the prefix's upper bound grows from prefix_tokens[0] to prefix_tokens[1] over this share of the
    phase (a lookup learnt on short sequences breaks on long ones if they come all at once)."""


RECIPE = 3
"""Part of a warm-started build's cache key (protege.model.tiny_digest): bump when the task or its phases change."""
NEAR = CopyPhase("near", 0.5, 1e-3, batch=32, run_tokens=(16, 48), prefix_tokens=(0, 32), gap_tokens=(0, 32))
FAR = CopyPhase("far", 0.3, 1e-3, batch=8, run_tokens=(16, 48), prefix_tokens=(0, 200), gap_tokens=(0, 400))
LONG = CopyPhase(
    "long",
    0.2,
    2e-4,
    batch=4,
    run_tokens=(16, 48),
    prefix_tokens=(200, 2500),
    gap_tokens=(0, 400),
    prefix_ramp=0.8,
)
PHASES = (NEAR, FAR, LONG)
WARMUP_STEPS = 20
LOG_EVERY = 100
PROBES = {"short": (0, 50), "medium": (200, 400), "long": (2000, 400)}
"""Copy-loss probes after training, (prefix, gap) around a PROBE_RUN-token run: 114, 664 and 2,464 tokens long."""
PROBE_RUN = 32


def _batch(
    generator: Any, vocab: int, phase: CopyPhase = NEAR, progress: float = 1.0, longest: int = 0
) -> tuple[Any, Any]:
    """Input ids and labels (-100 off the repeat) of one step `progress` (0..1) of the way through `phase`;
    `longest` > 0: prefix, then gap, cut so that the sequence fits the model's positions."""
    import torch

    def draw(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (1,), generator=generator))

    low, high = phase.prefix_tokens
    if phase.prefix_ramp:
        high = low + round((high - low) * min(1.0, progress / phase.prefix_ramp))
    run, prefix, gap = draw(*phase.run_tokens), draw(0, high), draw(*phase.gap_tokens)
    if longest and (excess := prefix + 2 * run + gap - longest) > 0:
        cut = min(prefix, excess)
        prefix, gap = prefix - cut, max(0, gap - (excess - cut))
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
    model: Any,
    vocab: int,
    phase: CopyPhase,
    steps: int,
    done: int,
    total: int,
    generator: Any,
    longest: int,
    log: Any,
) -> list[float]:
    """`steps` steps of `phase`, with its own optimiser and learning rate (as measured: the phases were run as
    separate trainings); `done`/`total` place them in the whole warm start for the log; `longest`: the
    model's positions (0: no bound)."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=phase.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / WARMUP_STEPS))
    losses: list[float] = []
    started = time.monotonic()
    for step in range(1, steps + 1):
        ids, labels = _batch(generator, vocab, phase, step / steps, longest)
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
    model: Any, vocab: int, prefix: int, gap: int, seed: int, batch: int = 4, run: int = PROBE_RUN
) -> float:
    """The model's loss on the repeat of a `run`-token run, `prefix` random tokens in and `gap` tokens on."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    ids, labels = _sequences(generator, vocab, batch, prefix, run, gap)
    with torch.no_grad():
        return float(model(input_ids=ids, labels=labels).loss)


def copy_warm_start(model: Any, vocab: int, steps: int, seed: int, log: Any = print) -> dict[str, Any]:
    """Train `model` in place for `steps` steps (PHASES in order, by share) on the repeat task over token ids
    [0, vocab); returns the mean loss of the first and the last ten steps, the steps of each phase and the copy
    loss of each of PROBES. Seeded by `seed`, without touching the global RNG."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    longest = getattr(model.config, "max_position_embeddings", 0) or 0
    counts = [round(steps * phase.share) for phase in PHASES[:-1]]
    counts.append(steps - sum(counts))
    model.train()
    losses: list[float] = []
    for phase, count in zip(PHASES, counts, strict=True):
        losses += _train(model, vocab, phase, count, len(losses), steps, generator, longest, log)
    model.eval()
    head, tail = losses[: min(10, steps)], losses[-min(10, steps) :]
    probes = {  # a probe longer than the model's positions would measure nothing the model is meant for
        name: round(copy_loss(model, vocab, prefix, gap, seed=seed + 1), 4)
        for name, (prefix, gap) in PROBES.items()
        if not longest or prefix + gap + 2 * PROBE_RUN <= longest
    }
    return {
        "steps": steps,
        "phase_steps": dict(zip([phase.name for phase in PHASES], counts, strict=True)),
        "first_loss": round(sum(head) / len(head), 4),
        "last_loss": round(sum(tail) / len(tail), 4),
        "chance_loss": round(math.log(vocab), 4),
        "copy_loss_by_context": probes,
    }
