"""TriangleMix's layer selection and its comparison with simple rules (Hydra app; conf/layer_selection.yaml).

1. Gradients: for held-out samples, the middle-region attention gradient of the first generated token's
   loss, per layer and head (`sparseattn.eval.layer_selection`); the ranking and one schedule YAML per k
   are written next to the results.
2. Comparison: for each k and method (gradient, deepest, shallowest, random), the schedule with k triangle
   layers answers the evaluation samples paired with dense (accuracy and decode-position fidelity).

Writes to a fresh folder, outputs/layer_selection/<time>, unless ``out_dir`` names one (a resumed run, or
``out_dir=experiments/results`` to update the committed results); a run that computes nothing (gradients
reused, every sample already evaluated) appends no provenance line.

    ./run.sh layer_selection                                  # ~1 h on 2 cores
    ./run.sh layer_selection k_values=[15] eval.samples=5 name=layer_selection_try
    ./run.sh layer_selection out_dir=experiments/results report_only=true
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from sparseattn.eval import report
from sparseattn.eval.layer_selection import LayerScores, schedule_config, select_layers
from sparseattn.eval.provenance import load_runs, markdown_header, output_dir, provenance, record_run
from sparseattn.patterns import Triangle


@hydra.main(config_path="../conf", config_name="layer_selection", version_base="1.3")
def main(cfg: DictConfig) -> None:
    out = output_dir(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    triangle = Triangle(**cfg.triangle)
    grads_path, rows_path = out / f"{cfg.name}_gradients.json", out / f"{cfg.name}.jsonl"
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()] if rows_path.exists() else []
    loaded = None
    reuse = cfg.reuse_gradients and grads_path.exists()
    if not cfg.report_only and (not reuse or pending(cfg, rows)):
        from sparseattn.integrations.model_loading import load_pretrained as load

        record_run(out / f"{cfg.name}_runs.json", cfg.threads)
        loaded = load(cfg.model, cfg.threads)
    if (cfg.reuse_gradients and grads_path.exists()) or cfg.report_only:
        scores = json.loads(grads_path.read_text())["per_layer"]
    else:
        scores = compute_gradients(cfg, triangle, *loaded, grads_path)
    num_layers = len(scores)
    choices = {
        f"{label}_k{k}": select_layers(method, k, num_layers, torch.tensor(scores), seed=seed)
        for k in cfg.k_values
        for method in cfg.methods
        for label, seed in series(method, cfg.random_seeds)
    }
    for k in cfg.k_values:
        layers = choices.get(f"gradient_k{k}")
        if layers is not None:
            (out / f"{cfg.name}_k{k}.yaml").write_text(
                f"# Triangle in the {k} layers with the smallest middle-attention gradient ({cfg.name}).\n"
                + yaml.safe_dump(schedule_config(layers, triangle), sort_keys=False)
            )
    if loaded is not None:
        rows += compare(cfg, choices, triangle, *loaded, rows_path, rows)
    write_report(cfg, out, scores, choices, rows)


def pending(cfg: DictConfig, rows: list[dict]) -> list[tuple[str, int]]:
    """(task, index) of the evaluation samples that ``rows`` do not hold yet."""
    from sparseattn.eval.paired_eval import done_keys

    done = done_keys(rows)
    return [(t, i) for t in cfg.eval.tasks for i in range(cfg.eval.samples) if (t, cfg.eval.length, i) not in done]


def series(method: str, random_seeds: list[int]) -> list[tuple[str, int]]:
    """(name, seed) of each series a method contributes: one per seed for random draws, else one."""
    if method == "random":
        return [(f"random_s{seed}", seed) for seed in random_seeds]
    return [(method, 0)]


def compute_gradients(cfg: DictConfig, triangle: Triangle, model, tokenizer, path: Path) -> list[float]:
    from sparseattn.eval.generation import answer
    from sparseattn.eval.layer_selection import middle_gradients
    from sparseattn.eval.tasks import TaskGenerator

    g = cfg.gradient
    generator = TaskGenerator(tokenizer, seed=g.seed)
    samples = [s for t in g.tasks for s in generator.samples(t, g.length, g.samples_per_task)]
    # The "first generated token" is dense's own greedy choice, so the loss is the model's, not the task's.
    targets = [
        answer(model, tokenizer, s.prompt_ids, max_new_tokens=1).forced_logits[0].argmax().item()
        for s in tqdm(samples, desc="dense first tokens")
    ]
    scores: LayerScores = middle_gradients(
        model, [s.prompt_ids for s in samples], targets, triangle=triangle, rows_per_chunk=g.rows_per_chunk
    )
    per_layer = scores.per_layer.tolist()
    path.write_text(
        json.dumps(
            {
                "provenance": provenance(cfg.threads),
                "samples": [{"task": s.task, "index": s.index, "num_tokens": s.num_tokens} for s in samples],
                "per_layer": per_layer,
                "grad_abs": scores.grad_abs.tolist(),
                "attribution": scores.attribution.tolist(),
            }
        )
    )
    return per_layer


def compare(cfg: DictConfig, choices: dict, triangle: Triangle, model, tokenizer, rows_path: Path, rows: list) -> list:
    from sparseattn.eval.masked_backend import AttentionSwitch
    from sparseattn.eval.paired_eval import evaluate_sample
    from sparseattn.eval.tasks import TaskGenerator

    # Equal layer sets are run once and their rows copied: deepest_k and gradient_k may coincide.
    first_of: dict[tuple, str] = {}
    aliases: dict[str, list[str]] = {}
    for name, layers in choices.items():
        owner = first_of.setdefault(tuple(layers), name)
        aliases.setdefault(owner, [])
        if owner != name:
            aliases[owner].append(name)
    schedules = {name: instantiate(OmegaConf.create(schedule_config(choices[name], triangle))) for name in aliases}
    switch = AttentionSwitch(cfg.backend, cfg.impl)
    generator = TaskGenerator(tokenizer, seed=cfg.eval.seed)
    todo = pending(cfg, rows)
    new = []
    with rows_path.open("a") as sink:
        for task, index in tqdm(todo, desc="samples", unit="sample"):
            got = evaluate_sample(model, tokenizer, generator.sample(task, cfg.eval.length, index), schedules, switch)
            got += [{**row, "system": alias} for row in got for alias in aliases.get(row["system"], ())]
            sink.write("".join(json.dumps(r) + "\n" for r in got))
            sink.flush()
            new += got
    return new


def write_report(cfg: DictConfig, out: Path, scores: list[float], choices: dict, rows: list) -> None:
    summary = report.summarize(rows, resamples=cfg.bootstrap_resamples, seed=cfg.eval.seed)
    runs = load_runs(out / f"{cfg.name}_runs.json")
    info = {"runs": runs, "rendered": provenance(), "config": OmegaConf.to_container(cfg, resolve=True)}
    (out / f"{cfg.name}.json").write_text(
        json.dumps({**info, "per_layer_gradient": scores, "layers": choices, "summary": summary}, indent=1)
    )
    ranking = sorted(range(len(scores)), key=lambda i: scores[i])
    notes = (
        "Gradient statistic per layer: mean |dL/dA| over the middle region (causal, not sink, not window, not the "
        "last rows), L = −log p(dense's first answer token), averaged over heads and the held-out samples in "
        f"`{cfg.name}_gradients.json`. Layers from smallest to largest: {ranking}.\n\n"
        + "\n".join(f"- `{name}`: triangle layers {layers}" for name, layers in choices.items())
    )
    text = markdown_header(f"Layer selection: {cfg.name}", runs, notes) + report.markdown_table(summary)
    (out / f"{cfg.name}.md").write_text(text)
    plot(cfg, out, scores, summary)
    print(text)


def plot(cfg: DictConfig, out: Path, scores: list[float], summary: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(15, 4))
    ax0.bar(range(len(scores)), scores, color="C0")
    ax0.set_yscale("log")
    ax0.set_xlabel("layer")
    ax0.set_ylabel("mean |dL/dA| over the middle region")
    ax0.set_title("gradient statistic (small: triangle candidate)", fontsize=9)
    labels = [label for method in cfg.methods for label, _ in series(method, cfg.random_seeds)]
    for method_index, method in enumerate(labels):
        entries = sorted(
            (int(s["system"].rsplit("_k", 1)[1]), s)
            for s in summary
            if s["system"].rsplit("_k", 1)[0] == method and s["base"] == "dense"
        )
        if not entries:
            continue
        ks = [k for k, _ in entries]
        ax1.errorbar(
            [k + 0.15 * method_index for k in ks],
            [100 * s["score"] for _, s in entries],
            yerr=[
                [100 * (s["diff"] - s["diff_low"]) for _, s in entries],
                [100 * (s["diff_high"] - s["diff"]) for _, s in entries],
            ],
            marker="o",
            capsize=3,
            label=method,
        )
        ax2.plot(ks, [s["kl_mean"] for _, s in entries], marker="o", label=method)
    if summary:
        ax1.axhline(100 * summary[0]["base_score"], color="0.5", linestyle="--", label="dense")
    ax1.set_xlabel("number of triangle layers k")
    ax1.set_ylabel("score (%) — whiskers: 95% CI of Δ vs dense")
    ax1.set_title(f"{', '.join(cfg.eval.tasks)} at {cfg.eval.length} tokens", fontsize=9)
    ax1.legend(fontsize=8)
    ax2.set_yscale("log")
    ax2.set_xlabel("number of triangle layers k")
    ax2.set_ylabel("KL(dense‖schedule), mean over answer positions")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{cfg.name}.png", dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    main()
