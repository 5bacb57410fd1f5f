"""Paired comparison of two systems scored on the same samples.

- `mcnemar_exact`: the exact (binomial) McNemar test on the discordant pairs of binary outcomes.
- `paired_bootstrap_ci`: a percentile bootstrap interval for mean(b) - mean(a), resampling samples
  (pairs stay together, which is what makes the interval narrow when the systems agree).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class McNemar:
    only_a: int  # samples system a got right and b got wrong
    only_b: int
    p_value: float


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> McNemar:
    """Two-sided exact McNemar test: under H0 the discordant pairs split Binomial(n, 1/2)."""
    if len(a) != len(b):
        raise ValueError(f"b: expected {len(a)} outcomes paired with a, got {len(b)}")
    only_a = sum(bool(x) and not bool(y) for x, y in zip(a, b, strict=True))
    only_b = sum(bool(y) and not bool(x) for x, y in zip(a, b, strict=True))
    return McNemar(only_a, only_b, binomial_two_sided(min(only_a, only_b), only_a + only_b))


def binomial_two_sided(k: int, n: int) -> float:
    """P(X <= k or X >= n - k) for X ~ Binomial(n, 1/2), with k <= n / 2; 1.0 when n = 0."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


def paired_bootstrap_ci(
    a: Sequence[float], b: Sequence[float], *, resamples: int = 10_000, level: float = 0.95, seed: int = 0
) -> Interval:
    """Percentile bootstrap interval for ``mean(b) - mean(a)`` over paired samples."""
    if len(a) != len(b):
        raise ValueError(f"b: expected {len(a)} scores paired with a, got {len(b)}")
    if len(a) == 0:
        raise ValueError("a: expected at least one paired sample")
    if not 0 < level < 1:
        raise ValueError(f"level: expected 0 < level < 1, got {level}")
    diff = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Interval(float(diff.mean()), float(low), float(high))
