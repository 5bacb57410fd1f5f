"""RULER's string-match metrics: a prediction is right where the reference strings occur in it.

RULER scores NIAH-style tasks with ``string_match_all`` (the fraction of references found, so a
multi-value answer earns partial credit) and QA with ``string_match_part`` (1 if any reference is
found). Both compare lower-cased text. A sample is *fully correct* when its score is 1; McNemar's
test needs that binary outcome.
"""

from __future__ import annotations

from collections.abc import Sequence

METRICS = ("all", "part")


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    """Fraction of ``references`` that occur in ``prediction`` (case-insensitive)."""
    if not references:
        raise ValueError("references: expected at least one reference string")
    text = prediction.lower()
    return sum(ref.lower() in text for ref in references) / len(references)


def string_match_part(prediction: str, references: Sequence[str]) -> float:
    """1.0 when any of ``references`` occurs in ``prediction`` (case-insensitive), else 0.0."""
    if not references:
        raise ValueError("references: expected at least one reference string")
    text = prediction.lower()
    return float(any(ref.lower() in text for ref in references))


def score(prediction: str, references: Sequence[str], metric: str) -> float:
    if metric == "all":
        return string_match_all(prediction, references)
    if metric == "part":
        return string_match_part(prediction, references)
    raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")
