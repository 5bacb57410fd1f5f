"""Paired evaluation: every schedule answers exactly the samples dense answers, one row per (sample, system).

For each sample, dense and every schedule prefill the prompt, their greedy answers are decoded together
(one batch per model), and dense's answer is then fed to every schedule's cache (teacher forcing) so the
same rows also carry decode-position fidelity against dense. Rows are plain dicts,
written as JSON lines by the caller, so an interrupted run resumes and a report can be rebuilt.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from sparseattn.eval.fidelity import compare_logits
from sparseattn.eval.generation import Prefilled, forced, greedy, prefill
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
    timings: dict[str, float] | None = None,
) -> list[dict]:
    """Rows for dense and each schedule on one sample; ``attach(model, schedule)`` switches attention
    (``None`` means dense)."""
    systems = {name: (model, s) for name, s in schedules.items()}
    return evaluate_systems(tokenizer, sample, model, systems, attach, timings)


def evaluate_systems(
    tokenizer: Any,
    sample: Sample,
    dense_model: Any,
    systems: Mapping[str, tuple[Any, LayerSchedule | None]],
    attach: Callable[[torch.nn.Module, LayerSchedule | None], None],
    timings: dict[str, float] | None = None,
) -> list[dict]:
    """Rows for dense (``dense_model`` with dense attention) and each system, a (model, schedule or None)
    pair: models other than dense's (fine-tuned copies) are paired on the same sample, and their fidelity
    is measured along ``dense_model``'s greedy answer too. ``timings``, when given, receives the seconds
    spent in each phase (``prefill_<system>``, ``decode``, ``forced``), added to what it holds."""
    if DENSE in systems:
        raise ValueError(f"schedules: the name {DENSE!r} is reserved for the dense baseline")
    clock = _Clock(timings, dense_model)
    attach(dense_model, None)
    prompts = {DENSE: prefill(dense_model, sample.prompt_ids)}
    clock.lap(f"prefill_{DENSE}")
    for name, (model, schedule) in systems.items():
        attach(model, schedule)
        prompts[name] = prefill(model, sample.prompt_ids)
        clock.lap(f"prefill_{name}")
    models = {DENSE: dense_model, **{name: model for name, (model, _) in systems.items()}}
    tokens = _decoded(tokenizer, sample, models, prompts, attach)
    clock.lap("decode")
    attach(dense_model, None)
    dense_logits = forced(dense_model, prompts[DENSE], tokens[DENSE])
    rows = [_row(sample, DENSE, tokenizer.decode(tokens[DENSE], skip_special_tokens=True), None)]
    for name, (model, schedule) in systems.items():
        attach(model, schedule)
        logits = forced(model, prompts[name], tokens[DENSE])
        text = tokenizer.decode(tokens[name], skip_special_tokens=True)
        rows.append(_row(sample, name, text, compare_logits(dense_logits, logits)))
    clock.lap("forced")
    return rows


class _Clock:
    """Wall seconds per phase into ``into`` (nothing when it is None), the GPU's queue drained at each lap."""

    def __init__(self, into: dict[str, float] | None, model: Any) -> None:
        self.into = into
        self.cuda = into is not None and next(model.parameters()).is_cuda
        self.start = time.perf_counter()

    def lap(self, phase: str) -> None:
        if self.into is None:
            return
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.into[phase] = self.into.get(phase, 0.0) + now - self.start
        self.start = now


def _decoded(
    tokenizer: Any,
    sample: Sample,
    models: Mapping[str, Any],
    prompts: Mapping[str, Prefilled],
    attach: Callable[[torch.nn.Module, LayerSchedule | None], None],
) -> dict[str, list[int]]:
    """Every system's greedy answer, the systems of one model decoded as one batch with dense attention
    (decode steps attend densely under every schedule). Rows do not see each other, but the batch's size
    changes how bf16 products round, so a near-tied token can flip: two runs of one schedule in batches of
    different sizes differ on a few percent of answers (the long-context report's repeatability section)."""
    tokens: dict[str, list[int]] = {}
    for model_id in dict.fromkeys(id(model) for model in models.values()):
        names = [name for name, model in models.items() if id(model) == model_id]
        attach(models[names[0]], None)
        batch = [prompts[name] for name in names]
        answers = greedy(models[names[0]], tokenizer, batch, max_new_tokens=sample.max_new_tokens)
        tokens.update(zip(names, answers, strict=True))
    return tokens


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


def recorded_systems(rows: Iterable[dict]) -> dict[tuple, dict[str, dict]]:
    """(task, length, index) -> {system: its row}: what a resumed run, or one with added schedules, has."""
    out: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        out.setdefault((r["task"], r["length"], r["index"]), {})[r["system"]] = r
    return out


def done_keys(rows: Iterable[dict]) -> set[tuple]:
    """(task, length, index) of samples whose rows are all present: resume skips them."""
    return {(r["task"], r["length"], r["index"]) for r in rows if r["system"] == DENSE}
