"""Per-layer, per-head fraction of dense attention mass each pattern keeps (Hydra app; conf/attention_profile.yaml).

Writes to a fresh folder, outputs/attention_profile/<time>, unless ``out_dir`` names one
(``out_dir=experiments/results`` updates the committed results).

./run.sh attention_profile                                   # ~15 min on 2 cores
./run.sh attention_profile length=2048 samples_per_task=1 name=attention_profile_try
./run.sh attention_profile out_dir=experiments/results report_only=true     # re-plot the committed JSON
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sparseattn.eval.provenance import markdown_header, output_dir, provenance


@hydra.main(config_path="../conf", config_name="attention_profile", version_base="1.3")
def main(cfg: DictConfig) -> None:
    out = output_dir(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{cfg.name}.json"
    if cfg.report_only:
        data = json.loads(path.read_text())
    else:
        data = measure(cfg)
        path.write_text(json.dumps(data))
    write_report(cfg, out, data)


def measure(cfg: DictConfig) -> dict:
    from sparseattn.eval.attention_profile import mass_kept
    from sparseattn.eval.tasks import TaskGenerator
    from sparseattn.integrations.model_loading import load_pretrained as load

    model, tokenizer = load(cfg.model, cfg.threads)
    generator = TaskGenerator(tokenizer, seed=cfg.seed)
    samples = [s for t in cfg.tasks for s in generator.samples(t, cfg.length, cfg.samples_per_task)]
    patterns = {name: instantiate(spec) for name, spec in cfg.patterns.items()}
    kept = mass_kept(model, [s.prompt_ids for s in samples], patterns, rows_per_chunk=cfg.rows_per_chunk)
    info = provenance(cfg.threads)
    info["config"] = OmegaConf.to_container(cfg, resolve=True)
    return {
        "provenance": info,
        "samples": [{"task": s.task, "index": s.index, "num_tokens": s.num_tokens} for s in samples],
        "patterns": {name: repr(p) for name, p in patterns.items()},
        "mass_kept": {name: t.tolist() for name, t in kept.items()},
    }


def write_report(cfg: DictConfig, out: Path, data: dict) -> None:
    import numpy as np

    kept = {name: np.array(v) for name, v in data["mass_kept"].items()}
    names = list(kept)
    head = "| layer | " + " | ".join(f"{n} mean (min head)" for n in names) + " |\n|---|" + "---|" * len(names) + "\n"
    lines = [
        f"| {layer} | " + " | ".join(f"{kept[n][layer].mean():.3f} ({kept[n][layer].min():.3f})" for n in names) + " |"
        for layer in range(next(iter(kept.values())).shape[0])
    ]
    notes = (
        "Fraction of each head's dense attention mass (softmax probabilities of the real model on real prompts) "
        "that the pattern keeps, averaged over all query rows and the prompts listed in the JSON. Patterns: "
        + "; ".join(f"`{n}` = {r}" for n, r in data["patterns"].items())
    )
    text = (
        markdown_header(f"Attention mass kept: {cfg.name}", [data["provenance"]], notes)
        + head
        + "\n".join(lines)
        + "\n"
    )
    (out / f"{cfg.name}.md").write_text(text)
    plot(kept, out / f"{cfg.name}.png", f"{cfg.name}: fraction of dense attention mass kept")
    print(text)


def plot(kept: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(kept), figsize=(3.2 * len(kept) + 1, 6), squeeze=False, layout="constrained")
    for ax, (name, matrix) in zip(axes[0], kept.items(), strict=True):
        image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0, vmax=1, origin="upper")
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(matrix.shape[1]))
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="mass kept")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    main()
