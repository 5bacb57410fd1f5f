"""Long context on a real model: TriangleMix, MInference and their combination (Hydra app; conf/long_context.yaml).

Parts (``parts=[...]``), each appending to its own file under ``out_dir`` as it goes, so a stopped run
(time box ``budget_s``, a lost machine) resumes where it left off and a second command extends it:

- ``selection``: TriangleMix's gradient layer selection at ``selection.length`` (``<name>_gradients.json``);
  the ``trianglemix_gradient`` schedule takes the ``selection.k`` layers with the smallest gradient, from
  that file (computed first when absent, or read from ``selection.file``).
- ``accuracy``: every schedule paired with dense on the same RULER-style samples (``<name>.jsonl``),
  samples interleaved over (length, task) so a time-boxed run leaves every cell with about the same count.
- ``structure``: per layer, on captured post-RoPE q/k/v of a real prompt, the estimated vertical-slash
  layout's density, the share of dense attention mass that triangle / vertical-slash / the combination
  keep (on sampled query rows), and attention times (``<name>_structure.jsonl``).
- ``dynamic``: per layer, on captured q/k/v of a real prompt, each of ``dynamic.rules`` alone: its estimated
  layout's density, the dense attention mass it keeps, its output's error against dense, and the times of
  its estimate + lowering, of its attention and of both, beside cuDNN dense and the triangle's kernel
  (``<name>_dynamic.jsonl``). With ``dynamic.as_schedules``, each rule is also a schedule (every layer)
  for the accuracy and TTFT parts.
- ``ttft``: experiments/ttft.py's measurement per (length, schedule) on random tokens (``<name>_ttft.jsonl``).

Past the model's 32K the RoPE is Qwen2.5's YaRN (``yarn`` below): extrapolation, labelled so in every record.
The report (``<name>.md``, ``<name>.json``, ``<name>.png``) is rebuilt from the records at the end.

    python experiments/long_context.py                                  # everything, default sizes
    python experiments/long_context.py 'parts=[accuracy]' accuracy.samples=20 budget_s=500
    python experiments/long_context.py report_only=true
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from long_context_report import cost_table, dynamic_table, plot_lengths, structure_table, ttft_table
from omegaconf import DictConfig, OmegaConf
from real_attention import (
    block_of,
    capture_qkv,
    dense_attention,
    mass_kept_rows,
    rule_on_layer,
    scheduled_attention,
    timed,
)
from tqdm import tqdm

from sparseattn.eval import report
from sparseattn.eval.provenance import load_runs, markdown_header, provenance, record_run

PARTS = ("selection", "accuracy", "structure", "dynamic", "ttft")


@hydra.main(config_path="../conf", config_name="long_context", version_base="1.3")
def main(cfg: DictConfig) -> None:
    unknown = set(cfg.parts) - set(PARTS)
    if unknown:
        raise ValueError(f"parts: expected a subset of {PARTS}, got {sorted(unknown)}")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.report_only:
        record_run(out / f"{cfg.name}_runs.json", cfg.threads)
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        deadline = time.monotonic() + cfg.budget_s if cfg.budget_s else None
        models = Models(cfg)
        for part in PARTS:  # a fixed order: the accuracy part needs the selection's gradients
            if part in cfg.parts and not past(deadline):
                globals()[f"run_{part}"](cfg, out, models, deadline)
    write_report(cfg, out)


def past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


class Models:
    """The model at its native RoPE or with YaRN, one at a time on the device, and the tokenizer."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self._key: str | None = None
        self._model: Any = None
        self._tokenizer: Any = None

    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = instantiate(self.cfg.model.tokenizer)
        return self._tokenizer

    def model(self, length: int) -> Any:
        """The model for prompts of ``length`` tokens: YaRN-scaled past ``yarn.from_length``."""
        load = OmegaConf.to_container(self.cfg.model.load, resolve=True)
        assert isinstance(load, dict)
        if is_yarn(self.cfg, length):
            load["rope_scaling"] = OmegaConf.to_container(self.cfg.yarn.rope_scaling)
        key = json.dumps(load, sort_keys=True)
        if key != self._key:
            self._model = None  # free the other one first
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self._model, self._key = instantiate(load), key
        return self._model


def is_yarn(cfg: DictConfig, length: int) -> bool:
    return length > cfg.yarn.from_length


# ----------------------------------------------------------------- schedules
def schedule_specs(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Hydra specs of the schedules under test; the gradient split only once its gradients exist."""
    specs = dict(cfg.schedules.items())
    if cfg.dynamic.as_schedules:
        for name, rule in cfg.dynamic.rules.items():
            specs[name] = OmegaConf.create({"_target_": "sparseattn.schedule.LayerSchedule", "default": rule})
    layers = gradient_layers(cfg, out)
    if layers is not None:
        from sparseattn.eval.layer_selection import schedule_config
        from sparseattn.patterns import Triangle

        specs["trianglemix_gradient"] = OmegaConf.create(schedule_config(layers, Triangle(**cfg.triangle)))
    return specs


def same_schedules(described: dict[str, str]) -> dict[str, str]:
    """``{later: earlier}`` for schedules that are one schedule under two names, from each name's
    description (the gradient selection may choose the paper split's layers): the later one is evaluated
    no further, and what was recorded for it serves as a repeatability check."""
    first: dict[str, str] = {}
    for name, text in described.items():
        first.setdefault(text, name)
    return {name: first[text] for name, text in described.items() if first[text] != name}


def describe(cfg: DictConfig, schedule: Any) -> str:
    """A schedule's layers as one line, the same for equal schedules."""
    return schedule.bind(cfg.num_layers).describe().replace("\n", "; ")


def gradient_layers(cfg: DictConfig, out: Path) -> list[int] | None:
    from sparseattn.eval.layer_selection import select_layers

    path = Path(cfg.selection.file) if cfg.selection.file else out / f"{cfg.name}_gradients.json"
    if not path.exists():
        return None
    scores = json.loads(path.read_text())["per_layer"]
    return select_layers("gradient", cfg.selection.k, len(scores), torch.tensor(scores))


def run_selection(cfg: DictConfig, out: Path, models: Models, deadline: float | None) -> None:
    if cfg.selection.file or (out / f"{cfg.name}_gradients.json").exists():
        return
    from sparseattn.eval.generation import answer
    from sparseattn.eval.layer_selection import middle_gradients
    from sparseattn.eval.tasks import TaskGenerator
    from sparseattn.patterns import Triangle

    s = cfg.selection
    model, tokenizer = models.model(s.length), models.tokenizer()
    generator = TaskGenerator(tokenizer, seed=s.seed)  # another seed than the evaluation's: held out
    samples = [x for t in s.tasks for x in generator.samples(t, s.length, s.samples_per_task)]
    # The target is dense's own first greedy token: the gradient is of the model's loss, not the task's.
    targets = [
        int(answer(model, tokenizer, x.prompt_ids, max_new_tokens=1).forced_logits[0].argmax())
        for x in tqdm(samples, desc="dense first tokens")
    ]
    scores = middle_gradients(
        model,
        [x.prompt_ids for x in samples],
        targets,
        triangle=Triangle(**cfg.triangle),
        rows_per_chunk=s.rows_per_chunk,
    )
    record = {
        "provenance": provenance(cfg.threads),
        "length": s.length,
        "samples": [{"task": x.task, "index": x.index, "num_tokens": x.num_tokens} for x in samples],
        "per_layer": scores.per_layer.tolist(),
        "grad_abs": scores.grad_abs.tolist(),
    }
    (out / f"{cfg.name}_gradients.json").write_text(json.dumps(record))


# ----------------------------------------------------------------- accuracy
def run_accuracy(cfg: DictConfig, out: Path, models: Models, deadline: float | None) -> None:
    from sparseattn.eval.masked_backend import AttentionSwitch
    from sparseattn.eval.paired_eval import DENSE, evaluate_sample, recorded_systems
    from sparseattn.eval.tasks import TaskGenerator

    a = cfg.accuracy
    rows_path = out / f"{cfg.name}.jsonl"
    recorded = recorded_systems(read_jsonl(rows_path))
    specs = schedule_specs(cfg, out)
    if "trianglemix_gradient" not in specs and a.gradient_split:
        raise FileNotFoundError(
            "accuracy: no gradients for trianglemix_gradient; add `selection` to parts, set selection.file, "
            "or evaluate without the gradient split (accuracy.gradient_split=false)"
        )
    schedules = {name: instantiate(spec, _convert_="all") for name, spec in specs.items()}
    same = same_schedules({name: describe(cfg, schedule) for name, schedule in schedules.items()})
    for name, other in same.items():
        print(f"accuracy: {name} is the same schedule as {other}; its cells are {other}'s from here on", flush=True)
        del schedules[name]
    switch = AttentionSwitch(cfg.backend, cfg.impl)
    generator = TaskGenerator(models.tokenizer(), seed=a.seed)
    wanted = {DENSE, *schedules}
    # Index-major: a time-boxed run stops with every (length, task) cell at about the same sample count.
    # A sample recorded for some schedules only (schedules added since) runs dense and the missing ones.
    todo = [
        (t, n, i)
        for i in range(a.samples)
        for n in a.lengths
        for t in a.tasks
        if not wanted <= recorded.get((t, n, i), {}).keys()
    ]
    changed = 0
    with rows_path.open("a") as sink, (out / f"{cfg.name}_timing.jsonl").open("a") as timing_sink:
        for (task, length, index), sample in tqdm(
            zip(todo, prefetched(generator, todo), strict=True), total=len(todo), desc="accuracy samples", unit="sample"
        ):
            if past(deadline):
                print(f"accuracy: time box reached, {len(todo)} samples were left to do; rerun to resume", flush=True)
                break
            have = recorded.get((task, length, index), {})
            missing = {name: s for name, s in schedules.items() if name not in have}
            timings: dict[str, float] = {}
            rows = evaluate_sample(models.model(length), models.tokenizer(), sample, missing, switch, timings)
            timing = {"task": task, "length": length, "index": index, "seconds": timings}
            timing_sink.write(json.dumps(timing) + "\n")
            timing_sink.flush()
            if DENSE in have:
                # The recorded dense row stays the baseline; its rerun only supplies the tokens to force.
                changed += rows[0]["prediction"] != have[DENSE]["prediction"]
                rows = rows[1:]
            sink.write("".join(json.dumps({**r, "yarn": is_yarn(cfg, length)}) + "\n" for r in rows))
            sink.flush()
    if changed:
        print(f"accuracy: dense's rerun answered differently from its recorded row on {changed} sample(s)", flush=True)


def prefetched(generator: Any, keys: list[tuple[str, int, int]]) -> Iterator[Any]:
    """``generator``'s samples for ``keys``, each built on a CPU thread while the GPU answers the one before
    (tokenizing a 32K-token prompt costs about as much as prefilling it)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = deque(pool.submit(generator.sample, *key) for key in keys[:2])
        for key in keys[2:]:
            ahead.append(pool.submit(generator.sample, *key))
            yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()


# ----------------------------------------------------------------- structure
def run_structure(cfg: DictConfig, out: Path, models: Models, deadline: float | None) -> None:
    from sparseattn.eval.tasks import TaskGenerator

    st = cfg.structure
    path = out / f"{cfg.name}_structure.jsonl"
    done = {(r["length"], r["layer"]) for r in read_jsonl(path)}
    for length in st.lengths:
        if all((length, layer) in done for layer in range(cfg.num_layers)) or past(deadline):
            continue
        model = models.model(length)
        sample = TaskGenerator(models.tokenizer(), seed=st.seed).sample(st.task, length, 0)
        captured = capture_qkv(model, sample.prompt_ids)
        with path.open("a") as sink:
            for layer, (q, k, v) in enumerate(tqdm(captured, desc=f"structure {length}", unit="layer")):
                if (length, layer) in done:
                    continue
                record = layer_structure(cfg, layer, q, k, v)
                record.update(length=length, num_tokens=sample.num_tokens, yarn=is_yarn(cfg, length))
                sink.write(json.dumps(record) + "\n")
                sink.flush()
        del captured


def layer_structure(cfg: DictConfig, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> dict:
    """Density, attention mass kept on sampled rows, and attention times of one layer's real q/k/v."""
    from sparseattn.attention import sparse_attention
    from sparseattn.patterns import Triangle
    from sparseattn.schedule import LayerSchedule

    st = cfg.structure
    vs = instantiate(cfg.vertical_slash)
    triangle = Triangle(**cfg.triangle)
    heads, size = q.shape[1], q.shape[2]
    estimate = vs.estimate(q, k)
    combined = triangle if layer >= cfg.model.trianglemix_from else estimate  # TriangleMix + MInference's layer
    kept = mass_kept_rows(q, k, {"triangle": triangle, "vertical_slash": estimate, "combined": combined}, st.rows)
    schedules = {
        "triangle": LayerSchedule.uniform(triangle).bind(1, heads),
        "vertical_slash": LayerSchedule.uniform(vs).bind(1, heads),
    }
    times = {"dense": timed(lambda: dense_attention(q, k, v), st.repeats)}
    for name, schedule in schedules.items():
        times[name] = timed(lambda s=schedule: scheduled_attention(cfg.impl, s, q, k, v), st.repeats)
    # A prefill lowers the triangle once for all its layers (the schedule's memo); the kernel alone is what
    # each further layer costs.
    triangle_layout = schedules["triangle"].layout(0, q, k, block_of(cfg.impl, q, k))
    times["triangle_kernel"] = timed(lambda: sparse_attention(q, k, v, triangle_layout, impl=cfg.impl), st.repeats)
    times["vertical_slash_estimate"] = timed(lambda: schedules["vertical_slash"].layout(0, q, k, (64, 64)), st.repeats)
    times["combined"] = times["triangle" if combined is triangle else "vertical_slash"]
    layout = schedules["vertical_slash"].layout(0, q, k, (64, 64))
    return {
        "layer": layer,
        "heads": heads,
        "size": size,
        "vs_density": layout.density(),
        "triangle_density": triangle_layout.density(),
        "combined_layer": "triangle" if combined is triangle else "vertical_slash",
        **{f"kept_{name}": value for name, value in kept.items()},
        **{f"ms_{name}": value for name, value in times.items()},
    }


# ----------------------------------------------------------------- dynamic rules
def run_dynamic(cfg: DictConfig, out: Path, models: Models, deadline: float | None) -> None:
    from sparseattn.attention import sparse_attention
    from sparseattn.eval.tasks import TaskGenerator
    from sparseattn.patterns import Triangle
    from sparseattn.schedule import LayerSchedule

    dy = cfg.dynamic
    path = out / f"{cfg.name}_dynamic.jsonl"
    done: dict[tuple[int, int], set[str]] = {}
    for r in read_jsonl(path):
        done.setdefault((r["length"], r["layer"]), set()).update(r["rules"])
    # Each rule as the schedule estimates it, and those in captured_rules again replayed from CUDA graphs
    # (`LayerSchedule(capture_estimates=True)`) under the name "<rule>_captured".
    patterns = {name: instantiate(spec, _convert_="all") for name, spec in dy.rules.items()}
    unknown = sorted(set(dy.get("captured_rules") or ()) - set(patterns))
    if unknown:
        raise ValueError(f"dynamic.captured_rules: expected names from dynamic.rules {sorted(patterns)}, got {unknown}")
    rules = {name: (rule, False) for name, rule in patterns.items()}
    rules |= {f"{name}_captured": (patterns[name], True) for name in dy.get("captured_rules") or ()}
    for length in dy.lengths:
        todo = [layer for layer in range(cfg.num_layers) if not rules.keys() <= done.get((length, layer), set())]
        if not todo or past(deadline):
            continue
        model = models.model(length)
        sample = TaskGenerator(models.tokenizer(), seed=dy.seed).sample(dy.task, length, 0)
        captured = capture_qkv(model, sample.prompt_ids)
        with path.open("a") as sink:
            for layer in tqdm(todo, desc=f"dynamic rules {length}", unit="layer"):
                if past(deadline):
                    break
                q, k, v = captured[layer]
                dense = dense_attention(q, k, v)
                triangle = LayerSchedule.uniform(Triangle(**cfg.triangle)).bind(1, q.shape[1])
                triangle_layout = triangle.layout(0, q, k, block_of(cfg.impl, q, k))
                record = {
                    "length": length,
                    "layer": layer,
                    "num_tokens": sample.num_tokens,
                    "yarn": is_yarn(cfg, length),
                    "ms_dense": timed(lambda q=q, k=k, v=v: dense_attention(q, k, v), dy.repeats),
                    # A prefill lowers the triangle once for all its layers: each costs its kernel.
                    "ms_triangle_kernel": timed(
                        lambda q=q, k=k, v=v, t=triangle_layout: sparse_attention(q, k, v, t, impl=cfg.impl),
                        dy.repeats,
                    ),
                    "rules": {
                        name: rule_on_layer(cfg.impl, rule, q, k, v, dense, dy.rows, dy.repeats, capture=capture)
                        for name, (rule, capture) in rules.items()
                        if name not in done.get((length, layer), set())
                    },
                }
                sink.write(json.dumps(record) + "\n")
                sink.flush()
        del captured


# ----------------------------------------------------------------- TTFT
def run_ttft(cfg: DictConfig, out: Path, models: Models, deadline: float | None) -> None:
    from ttft import run_ttft as measure  # experiments/ttft.py: this script's folder is on sys.path

    path = out / f"{cfg.name}_ttft.jsonl"
    done = {(r["length"], r["label"]) for r in read_jsonl(path)}
    for length in cfg.ttft.lengths:
        for name in cfg.ttft.schedules:
            if (length, name) in done or past(deadline):
                continue
            model = OmegaConf.to_container(cfg.model, resolve=True)
            assert isinstance(model, dict)
            if is_yarn(cfg, length):
                model["load"]["rope_scaling"] = OmegaConf.to_container(cfg.yarn.rope_scaling)
            job = OmegaConf.create(
                {
                    "model": model,
                    # _convert_: the rules reach LayerSchedule as plain dicts holding instantiated patterns.
                    "schedule": {**OmegaConf.to_container(spec_of(cfg, out, name), resolve=True), "_convert_": "all"},
                    "label": name,
                    "length": length,
                    "batch": 1,
                    "impl": cfg.impl,
                    "causal_backend": "sdpa",
                    "sdpa_backend": cfg.ttft.sdpa_backend,
                    "use_cache": True,
                    "warmup_length": length,
                    "repeats": cfg.ttft.repeats,
                    "layer_timing": True,
                    "seed": 0,
                    "device_per_job": False,
                }
            )
            record = measure(job, progress=True)
            record.update(label=name, schedule=name, yarn=is_yarn(cfg, length))
            with path.open("a") as sink:
                sink.write(json.dumps(record) + "\n")


def spec_of(cfg: DictConfig, out: Path, name: str) -> Any:
    return cfg.dense if name == "dense" else schedule_specs(cfg, out)[name]


# ----------------------------------------------------------------- report
def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def write_report(cfg: DictConfig, out: Path) -> None:
    rows = read_jsonl(out / f"{cfg.name}.jsonl")
    structure = read_jsonl(out / f"{cfg.name}_structure.jsonl")
    ttft = read_jsonl(out / f"{cfg.name}_ttft.jsonl")
    dynamic = read_jsonl(out / f"{cfg.name}_dynamic.jsonl")
    summary = report.summarize(rows, resamples=cfg.bootstrap_resamples, seed=cfg.accuracy.seed)
    control = [
        s
        for s in report.summarize(
            rows, base=cfg.control.against, resamples=cfg.bootstrap_resamples, seed=cfg.accuracy.seed
        )
        if s["system"] == cfg.control.system
    ]
    runs = load_runs(out / f"{cfg.name}_runs.json")
    layers = gradient_layers(cfg, out)
    specs = schedule_specs(cfg, out)
    described = {name: describe(cfg, instantiate(spec, _convert_="all")) for name, spec in specs.items()}
    payload = {
        "runs": runs,
        "rendered": provenance(),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "schedules": described,
        "gradient_layers": layers,
        "summary": summary,
        "negative_control": control,
        "structure": structure,
        "dynamic": dynamic,
        "ttft": [{k: v for k, v in r.items() if k != "layers"} for r in ttft],
    }
    (out / f"{cfg.name}.json").write_text(json.dumps(payload, indent=1))
    yarn = cfg.yarn.rope_scaling
    notes = (
        f"Model: `{cfg.model.name}`. Lengths above {cfg.yarn.from_length} tokens run with YaRN RoPE scaling "
        f"(factor {yarn.factor}, original {yarn.original_max_position_embeddings}): **extrapolation** past the "
        "model's trained context, marked `yarn` in every record.\n\n"
        f"Paired: every schedule answers dense's samples; Δ with a 95% paired-bootstrap CI, exact McNemar on fully "
        f"correct samples. TriangleMix paper-style split: layers {cfg.model.trianglemix_from}- triangle (Qwen2.5-7B's "
        f"20 of 28 dense scaled to {cfg.num_layers} layers). Gradient split: the {cfg.selection.k} layers with the "
        f"smallest middle-attention gradient: {layers}.\n\nSchedules:\n\n"
        + "\n".join(f"- `{name}`: {text}" for name, text in described.items())
    )
    text = markdown_header(f"Long context: {cfg.name}", runs, notes) + report.markdown_table(summary)
    if control:
        text += f"\n## Negative control: `{cfg.control.system}` paired against `{cfg.control.against}`\n\n"
        text += report.markdown_table(control)
    same = same_schedules(described)
    text += repeatability(cfg, rows, same)
    text += structure_table(structure) + dynamic_table(dynamic, cfg.model.trianglemix_from)
    text += ttft_table(ttft) + cost_table(read_jsonl(out / f"{cfg.name}_timing.jsonl"))
    (out / f"{cfg.name}.md").write_text(text)
    # A schedule recorded under a second name is one line in the plot, the name evaluated to the end.
    plotted = [s for s in summary if s["system"] not in same]
    if plotted:
        plot_lengths(plotted, out / f"{cfg.name}.png", f"{cfg.name}: accuracy against length")
    print(text)


def repeatability(cfg: DictConfig, rows: list[dict], same: dict[str, str]) -> str:
    """For each schedule recorded under two names, how far two evaluations of one schedule differ: the
    noise floor every Δ above sits on."""
    text = ""
    for name, other in same.items():
        paired = [
            s
            for s in report.summarize(rows, base=other, resamples=cfg.bootstrap_resamples, seed=cfg.accuracy.seed)
            if s["system"] == name
        ]
        if not paired:
            continue
        answers: dict[tuple, dict[str, str]] = {}
        for r in rows:
            if r["system"] in (name, other):
                answers.setdefault((r["task"], r["length"], r["index"]), {})[r["system"]] = r["prediction"]
        both = [a for a in answers.values() if len(a) == 2]
        differ = sum(a[name] != a[other] for a in both)
        text += (
            f"\n## Repeatability: `{name}` is the same schedule as `{other}`\n\n"
            f"Both were evaluated on the same {len(both)} samples, in different runs: their greedy answers differ on "
            f"{differ} ({100 * differ / len(both):.1f}%). The prefill is the same kernel on the same tokens; what "
            "differed is the decode batch (one row per system evaluated together, so its size changed between "
            "runs), and bf16 products of different batch shapes may round differently: a near-tied token flips "
            "and the answer diverges from there. A Δ of this size between two schedules is within the "
            "evaluation's own noise.\n\n"
        )
        text += report.markdown_table(paired)
    return text


if __name__ == "__main__":
    main()
