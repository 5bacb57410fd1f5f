"""Paired evaluation: every schedule answers exactly the samples dense answers, one row per (sample, system).

For each sample, dense runs first; its greedy answer is then fed to every schedule's cache (teacher
forcing) so the same rows also carry decode-position fidelity against dense. Rows are plain dicts,
written as JSON lines by the caller, so an interrupted run resumes and a report can be rebuilt.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from sparseattn.eval.fidelity import compare_logits
from sparseattn.eval.generation import answer
from sparseattn.eval.scoring import score
from sparseattn.eval.tasks import Sample
from sparseattn.schedule import LayerSchedule

DENSE = "dense"


def evaluate_sample(
    model: Any,
    tokenizer: Any,
    sample: Sample,
    schedules: Mapping[str, LayerSchedule],
    attach: Callable[[torch.nn.Module, LayerSchedule | None], None],
) -> list[dict]:
    """Rows for dense and each schedule on one sample; ``attach(model, schedule)`` switches attention
    (``None`` means dense)."""
    return evaluate_systems(tokenizer, sample, model, {name: (model, s) for name, s in schedules.items()}, attach)


def evaluate_systems(
    tokenizer: Any,
    sample: Sample,
    dense_model: Any,
    systems: Mapping[str, tuple[Any, LayerSchedule | None]],
    attach: Callable[[torch.nn.Module, LayerSchedule | None], None],
) -> list[dict]:
    """Rows for dense (``dense_model`` with dense attention) and each system, a (model, schedule or None)
    pair: models other than dense's (fine-tuned copies) are paired on the same sample, and their fidelity
    is measured along ``dense_model``'s greedy answer too."""
    if DENSE in systems:
        raise ValueError(f"schedules: the name {DENSE!r} is reserved for the dense baseline")
    attach(dense_model, None)
    dense = answer(dense_model, tokenizer, sample.prompt_ids, max_new_tokens=sample.max_new_tokens)
    rows = [_row(sample, DENSE, dense.text, None)]
    for name, (model, schedule) in systems.items():
        attach(model, schedule)
        got = answer(model, tokenizer, sample.prompt_ids, max_new_tokens=sample.max_new_tokens, force=dense.tokens)
        rows.append(_row(sample, name, got.text, compare_logits(dense.forced_logits, got.forced_logits)))
    return rows


def _row(sample: Sample, system: str, text: str, fidelity: Any) -> dict[str, Any]:
    value = score(text, sample.references, sample.metric)
    row = {
        "task": sample.task,
        "length": sample.length,
        "index": sample.index,
        "num_tokens": sample.num_tokens,
        "system": system,
        "prediction": text,
        "score": value,
        "correct": value == 1.0,
    }
    if fidelity is not None:
        row.update(
            kl_first=float(fidelity.kl[0]),
            kl_mean=float(fidelity.kl.mean()),
            top1_first=bool(fidelity.top1[0]),
            top1_mean=float(fidelity.top1.float().mean()),
        )
    return row


def done_keys(rows: Iterable[dict]) -> set[tuple]:
    """(task, length, index) of samples whose rows are all present: resume skips them."""
    return {(r["task"], r["length"], r["index"]) for r in rows if r["system"] == DENSE}
