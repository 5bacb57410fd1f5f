"""Paired statistics against values computed by hand (and textbook normal approximations)."""

import math

import numpy as np
import pytest

from sparseattn.eval.paired_stats import binomial_two_sided, mcnemar_exact, paired_bootstrap_ci


def test_mcnemar_counts_discordant_pairs_and_matches_the_binomial_by_hand():
    a = [1] * 10 + [0] * 2 + [1] * 30 + [0] * 8  # 10 only-a, 2 only-b, 30 both right, 8 both wrong
    b = [0] * 10 + [1] * 2 + [1] * 30 + [0] * 8
    result = mcnemar_exact(a, b)
    assert (result.only_a, result.only_b) == (10, 2)
    # 2 * P(X <= 2), X ~ Binomial(12, 1/2) = 2 * (1 + 12 + 66) / 4096; scipy.stats.binomtest(2, 12) says 0.03857.
    assert result.p_value == pytest.approx(158 / 4096)
    assert result.p_value == pytest.approx(0.0385742, abs=1e-7)


def test_mcnemar_without_discordant_pairs_or_balanced_is_one():
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]).p_value == 1.0
    assert binomial_two_sided(3, 6) == 1.0
    assert binomial_two_sided(0, 5) == pytest.approx(2 / 32)


def test_mcnemar_rejects_unpaired_lengths():
    with pytest.raises(ValueError, match="b:"):
        mcnemar_exact([1, 0], [1])


def test_bootstrap_of_identical_systems_is_the_point_zero():
    scores = [1, 0, 1, 1, 0, 0.5]
    ci = paired_bootstrap_ci(scores, scores, resamples=2000)
    assert (ci.estimate, ci.low, ci.high) == (0.0, 0.0, 0.0)


def test_bootstrap_matches_the_normal_interval_of_the_mean_difference():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2, 400).astype(float)
    flip = rng.random(400) < 0.2
    b = np.where(flip, 1 - a, a)
    ci = paired_bootstrap_ci(a, b, resamples=20_000, seed=3)
    diff = b - a
    half = 1.959964 * diff.std(ddof=1) / math.sqrt(len(diff))
    assert ci.estimate == pytest.approx(diff.mean())
    assert ci.low == pytest.approx(diff.mean() - half, abs=0.15 * half)
    assert ci.high == pytest.approx(diff.mean() + half, abs=0.15 * half)
    assert paired_bootstrap_ci(a, b, resamples=20_000, seed=3) == ci  # seeded: reproducible


@pytest.mark.parametrize("kwargs, name", [({"level": 1.5}, "level"), ({}, "b:")])
def test_bootstrap_names_bad_arguments(kwargs, name):
    b = [1.0, 0.0] if kwargs else [1.0]
    with pytest.raises(ValueError, match=name):
        paired_bootstrap_ci([1.0, 0.0], b, **kwargs)
