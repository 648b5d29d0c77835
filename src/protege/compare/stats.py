"""Paired tests on two variants' outcomes on the same instances. Pure functions, standard library only.

A comparison pairs by instance: each variant's outcome on an instance is its resolved share over its
attempts (0 or 1 with one attempt, as in the paper). McNemar's exact test counts the discordant
instances (b: only the variant resolved, c: only the reference did; an instance with fractional shares
counts towards b or c by the sign of its difference) and gives the two-sided binomial p-value of b
against b + c at one half. The paired bootstrap resamples instances with replacement and reports the
percentile interval of the mean difference.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Mapping
from dataclasses import dataclass


class PairingError(ValueError):
    """Two variants cannot be paired (no instance in common)."""


@dataclass(frozen=True)
class Paired:
    """A variant against the reference on their common instances."""

    instances: int
    """Instances both were graded on."""
    difference: float
    """Mean of (variant - reference) resolved shares: the Pass@1 difference on the common instances."""
    only_variant: int
    """McNemar b: instances the variant resolved and the reference did not."""
    only_reference: int
    """McNemar c: instances the reference resolved and the variant did not."""
    mcnemar_p: float
    """Two-sided exact McNemar p-value (1.0 with no discordant instance)."""
    ci_low: float
    """Paired bootstrap percentile interval of the difference."""
    ci_high: float


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: 2 * P(X <= min(b, c)) for X ~ Binomial(b + c, 1/2), capped at 1."""
    if b < 0 or c < 0:
        raise PairingError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def bootstrap_interval(
    differences: list[float], confidence: float, samples: int, seed: int
) -> tuple[float, float]:
    """Percentile interval of the mean of `differences` over `samples` resamples (seeded)."""
    if not differences:
        raise PairingError("no paired instance to resample")
    rng = random.Random(seed)
    n = len(differences)
    means = sorted(statistics.fmean(rng.choices(differences, k=n)) for _ in range(samples))
    tail = (1 - confidence) / 2
    low = means[max(0, math.floor(tail * samples))]
    high = means[min(samples - 1, math.ceil((1 - tail) * samples) - 1)]
    return low, high


def paired(
    variant: Mapping[str, float],
    reference: Mapping[str, float],
    confidence: float,
    samples: int = 2000,
    seed: int = 0,
) -> Paired:
    """The variant against the reference on their common instances (instance_id -> resolved share)."""
    common = sorted(set(variant) & set(reference))
    if not common:
        raise PairingError("the two variants share no graded instance")
    differences = [variant[i] - reference[i] for i in common]
    b = sum(d > 0 for d in differences)
    c = sum(d < 0 for d in differences)
    low, high = bootstrap_interval(differences, confidence, samples, seed)
    return Paired(len(common), statistics.fmean(differences), b, c, mcnemar_exact(b, c), low, high)
