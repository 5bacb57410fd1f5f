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
- ``ttft``: experiments/ttft.py's measurement per (length, schedule) on random tokens (``<name>_ttft.jsonl``).

Past the model's 32K the RoPE is Qwen2.5's YaRN (``yarn`` below): extrapolation, labelled so in every record.
The report (``<name>.md``, ``<name>.json``, ``<name>.png``) is rebuilt from the records at the end.

    python experiments/long_context.py                                  # everything, default sizes
    python experiments/long_context.py 'parts=[accuracy]' accuracy.samples=20 budget_s=500
    python experiments/long_context.py report_only=true
"""

from __future__ import annotations

import json
import statistics
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from sparseattn.eval import report
from sparseattn.eval.provenance import load_runs, markdown_header, provenance, record_run

PARTS = ("selection", "accuracy", "structure", "ttft")


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
    layers = gradient_layers(cfg, out)
    if layers is not None:
        from sparseattn.eval.layer_selection import schedule_config
        from sparseattn.patterns import Triangle

        specs["trianglemix_gradient"] = OmegaConf.create(schedule_config(layers, Triangle(**cfg.triangle)))
    return specs


def same_schedules(cfg: DictConfig, specs: dict[str, Any]) -> dict[str, str]:
    """``{later: earlier}`` for schedules that are one schedule under two names (the gradient selection may
    choose the paper split's layers): the later one is evaluated no further, and what was recorded for it
    serves as a repeatability check."""
    seen: dict[str, str] = {}
    same: dict[str, str] = {}
    for name, spec in specs.items():
        text = instantiate(spec, _convert_="all").bind(cfg.num_layers).describe()
        if text in seen:
            same[name] = seen[text]
        else:
            seen[text] = name
    return same


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
    same = same_schedules(cfg, specs)
    for name, other in same.items():
        print(f"accuracy: {name} is the same schedule as {other}; its cells are {other}'s from here on", flush=True)
    schedules = {name: instantiate(spec, _convert_="all") for name, spec in specs.items() if name not in same}
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


@torch.no_grad()
def capture_qkv(model: Any, prompt_ids: Any) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Post-RoPE ``(q, k, v)`` of every layer from one dense prefill (the model's own SDPA attention)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    captured: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def capture(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> Any:
        captured[int(module.layer_idx)] = (query.detach(), key.detach(), value.detach())
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    previous = model.config._attn_implementation
    AttentionInterface.register("sparseattn_capture", capture)
    AttentionMaskInterface.register("sparseattn_capture", sdpa_mask)
    model.set_attn_implementation("sparseattn_capture")
    try:
        device = next(model.parameters()).device
        model(torch.tensor([list(prompt_ids)], device=device), use_cache=False, logits_to_keep=1)
    finally:
        model.set_attn_implementation(previous)
    return [captured[i] for i in range(len(captured))]


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


def block_of(impl: str, q: torch.Tensor, k: torch.Tensor) -> Any:
    import functools

    from sparseattn.attention import default_block_size

    return functools.partial(
        default_block_size, impl, q.shape[-1], q.dtype, group=q.shape[1] // k.shape[1], device=q.device
    )


def scheduled_attention(impl: str, schedule: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """What a sparse layer costs in a prefill: its layout (lowered or estimated anew) and the kernel."""
    from sparseattn.attention import sparse_attention

    schedule.clear_cache()
    layout = schedule.layout(0, q, k, block_of(impl, q, k))
    return sparse_attention(q, k, v, layout, impl=impl)


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The dense baseline as the integration runs it: SDPA on repeated K/V, cuDNN on CUDA."""
    from contextlib import nullcontext

    from torch.nn.attention import SDPBackend, sdpa_kernel

    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION) if q.is_cuda else nullcontext():
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


def timed(fn: Any, repeats: int) -> float:
    """Median milliseconds of ``fn`` after one untimed call (compilation, cuDNN plans)."""
    fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


@torch.no_grad()
def mass_kept_rows(q: torch.Tensor, k: torch.Tensor, patterns: dict, rows: int) -> dict[str, float]:
    """Mean over heads and ``rows`` evenly spaced query rows of the dense softmax mass each pattern keeps.

    Evenly spaced rows estimate the all-rows mean that sparseattn.eval.attention_profile computes, at a
    cost that stays small at 128K (all rows would be 14 x 128K x 128K probabilities per layer).
    """
    from sparseattn.patterns import MaskContext

    heads, size = q.shape[1], q.shape[2]
    picked = torch.linspace(0, size - 1, min(rows, size), device=q.device).round().long().unique()
    groups = heads // k.shape[1]
    kk = k[0].repeat_interleave(groups, dim=0).float()  # [H, N, D]
    scores = torch.einsum("hqd,hkd->hqk", q[0, :, picked].float(), kk) * q.shape[-1] ** -0.5
    keys = torch.arange(size, device=q.device)
    scores.masked_fill_(keys.view(1, 1, -1) > picked.view(1, -1, 1), float("-inf"))
    probs = scores.softmax(dim=-1)
    ctx = MaskContext(size, size, heads)
    h = torch.arange(heads, device=q.device).view(-1, 1, 1)
    out = {}
    for name, pattern in patterns.items():
        mask = pattern.mask(h, picked.view(1, -1, 1), keys.view(1, 1, -1), ctx)
        out[name] = float((probs * mask).sum(dim=-1).mean())
    return out


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
    described = {
        name: instantiate(spec, _convert_="all").bind(cfg.num_layers).describe().replace("\n", "; ")
        for name, spec in specs.items()
    }
    payload = {
        "runs": runs,
        "rendered": provenance(),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "schedules": described,
        "gradient_layers": layers,
        "summary": summary,
        "negative_control": control,
        "structure": structure,
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
    text += repeatability(cfg, rows, same_schedules(cfg, specs))
    text += structure_table(structure) + ttft_table(ttft) + cost_table(read_jsonl(out / f"{cfg.name}_timing.jsonl"))
    (out / f"{cfg.name}.md").write_text(text)
    if summary:
        plot_lengths(summary, out / f"{cfg.name}.png", f"{cfg.name}: accuracy against length")
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


def structure_table(records: list[dict]) -> str:
    if not records:
        return ""
    head = (
        "\n## Attention structure per layer (real q/k/v of one prompt; mass kept on evenly spaced query rows)\n\n"
        "| len | yarn | layer | VS density | mass kept: triangle | VS | combined (layer's) | ms dense (cuDNN) | "
        "ms triangle (incl. lowering) | ms triangle kernel | ms VS (incl. estimate) | ms VS estimate+lowering | "
        "ms combined |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['length']} | {r['yarn']} | {r['layer']} | {r['vs_density']:.3f} | {r['kept_triangle']:.3f} | "
        f"{r['kept_vertical_slash']:.3f} | {r['kept_combined']:.3f} ({r['combined_layer']}) | {r['ms_dense']:.2f} | "
        f"{r['ms_triangle']:.2f} | {_ms(r, 'triangle_kernel')} | {r['ms_vertical_slash']:.2f} | {r['ms_vertical_slash_estimate']:.2f} | "
        f"{r['ms_combined']:.2f} |"
        for r in sorted(records, key=lambda r: (r["length"], r["layer"]))
    ]
    totals = []
    for length in sorted({r["length"] for r in records}):
        rs = [r for r in records if r["length"] == length]
        sums = {key: sum(r[f"ms_{key}"] for r in rs) for key in ("dense", "triangle", "vertical_slash", "combined")}
        est = sum(r["ms_vertical_slash_estimate"] for r in rs)
        totals.append(
            f"- {length} tokens ({len(rs)} layers): dense {sums['dense']:.1f} ms, triangle {sums['triangle']:.1f} ms, "
            f"VS {sums['vertical_slash']:.1f} ms (estimate+lowering {est:.1f} ms = "
            f"{100 * est / sums['vertical_slash']:.1f}%), combined {sums['combined']:.1f} ms "
            f"({100 * (1 - sums['combined'] / sums['vertical_slash']):+.1f}% faster than VS alone)"
        )
    note = (
        "\nA prefill lowers the triangle once for all its triangle layers (the schedule's memo), so each layer "
        "after the first costs the kernel alone; the per-layer triangle and combined figures above pay the "
        "lowering in every layer. Records without the kernel column (—) predate it.\n"
    )
    return head + "\n".join(lines) + "\n\nTotals over layers:\n\n" + "\n".join(totals) + "\n" + note


def cost_table(records: list[dict]) -> str:
    """Mean seconds per evaluated sample and phase, per length: where the accuracy part's time goes."""
    if not records:
        return ""
    phases = sorted({phase for r in records for phase in r["seconds"]})
    lines = [
        "\n## What an accuracy sample costs (mean wall seconds per sample; systems evaluated on it vary)\n",
        "| len | samples | " + " | ".join(phases) + " | total |",
        "|---|---|" + "---|" * (len(phases) + 1),
    ]
    for length in sorted({r["length"] for r in records}):
        rs = [r["seconds"] for r in records if r["length"] == length]
        means = [sum(r.get(p, 0.0) for r in rs) / len(rs) for p in phases]
        cells = " | ".join(f"{m:.3f}" for m in means)
        lines.append(f"| {length} | {len(rs)} | {cells} | {sum(means):.3f} |")
    return "\n".join(lines) + "\n"


def _ms(record: dict, key: str) -> str:
    value = record.get(f"ms_{key}")
    return "—" if value is None else f"{value:.2f}"


def ttft_table(records: list[dict]) -> str:
    if not records:
        return ""
    head = "\n## TTFT (random tokens, median of repeats)\n\n| len | yarn | schedule | TTFT ms | attention ms | device |\n|---|---|---|---|---|---|\n"
    lines = [
        f"| {r['length']} | {r['yarn']} | {r['label']} | {r['ttft_ms']:.1f} | {r['attention_ms']:.1f} | {r['device']} |"
        for r in sorted(records, key=lambda r: (r["length"], r["label"]))
    ]
    return head + "\n".join(lines) + "\n"


def plot_lengths(summary: list[dict], path: Path, title: str) -> None:
    """One panel per task: score against length per schedule, dense dashed; whiskers the CI of Δ vs dense."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({s["task"] for s in summary})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        entries = [s for s in summary if s["task"] == task]
        lengths = sorted({s["length"] for s in entries})
        base = {s["length"]: s["base_score"] for s in entries}
        ax.plot(lengths, [100 * base[n] for n in lengths], "k--", marker="s", label="dense")
        for j, system in enumerate(sorted({s["system"] for s in entries})):
            got = sorted((s["length"], s) for s in entries if s["system"] == system)
            ax.errorbar(
                [n * (1 + 0.02 * j) for n, _ in got],
                [100 * s["score"] for _, s in got],
                yerr=[
                    [100 * (s["diff"] - s["diff_low"]) for _, s in got],
                    [100 * (s["diff_high"] - s["diff"]) for _, s in got],
                ],
                marker="o",
                capsize=3,
                label=system,
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.set_title(f"{task} (n={min(s['n'] for s in entries)})", fontsize=9)
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel("RULER score (%)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title + " — whiskers: 95% paired-bootstrap CI of (schedule − dense)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    main()
