"""Gather the ``ttft.json`` files of one or more sweeps into one Markdown table, one JSON and one plot.

    python experiments/report.py multirun/ttft/2026-01-01_12-00-00 [more dirs] --out experiments/results/ttft_h200

Writes ``<out>.md`` (TTFT per model, length and schedule, with the change against dense SDPA of the same
run; attention time, peak memory and a per-layer attention breakdown at the longest length),
``<out>.json`` (every record) and ``<out>.png`` (TTFT against length; attention time per layer).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

BASELINE = "dense"


def gather(dirs: list[Path]) -> list[dict]:
    files = sorted(f for d in dirs for f in d.rglob("ttft.json"))
    if not files:
        raise SystemExit(f"report: no ttft.json under {[str(d) for d in dirs]}")
    return [json.loads(f.read_text()) for f in tqdm(files, desc="reading", disable=len(files) < 20)]


def _length(tokens: int) -> str:
    return f"{tokens // 1024}K" if tokens % 1024 == 0 else str(tokens)


def _order(labels: set[str]) -> list[str]:
    first = [BASELINE, f"{BASELINE}[kernel]"]
    return [x for x in first if x in labels] + sorted(labels - set(first))


def markdown(records: list[dict]) -> str:
    by_cell = {(r["model"], r["length"], r["label"]): r for r in records}
    labels = _order({r["label"] for r in records})
    rows = sorted({(r["model"], r["length"]) for r in records})
    out = [
        "TTFT in seconds (median of the timed prefills); in brackets the change against dense SDPA "
        f"(`{BASELINE}`) of the same model and length. `[kernel]`: dense layers through our kernel.",
        "",
        "| model | length | " + " | ".join(labels) + " |",
        "|---|---:|" + "---:|" * len(labels),
    ]
    for model, length in rows:
        base = by_cell.get((model, length, BASELINE))
        cells = []
        for label in labels:
            r = by_cell.get((model, length, label))
            if r is None:
                cells.append("—")
                continue
            change = f" ({100 * (r['ttft_ms'] / base['ttft_ms'] - 1):+.0f}%)" if base and label != BASELINE else ""
            cells.append(f"{r['ttft_ms'] / 1e3:.2f}{change}")
        out.append(f"| {model} | {_length(length)} | " + " | ".join(cells) + " |")
    out += ["", "Attention time (all layers, ms) / peak memory (GiB):", ""]
    out += ["| model | length | " + " | ".join(labels) + " |", "|---|---:|" + "---:|" * len(labels)]
    for model, length in rows:
        cells = []
        for label in labels:
            r = by_cell.get((model, length, label))
            memory = f" / {r['peak_memory_gib']:.1f}" if r and r.get("peak_memory_gib") is not None else ""
            cells.append(f"{r['attention_ms']:.0f}{memory}" if r else "—")
        out.append(f"| {model} | {_length(length)} | " + " | ".join(cells) + " |")
    out += ["", *per_layer_table(records, labels), "", *provenance(records)]
    return "\n".join(out) + "\n"


def per_layer_table(records: list[dict], labels: list[str]) -> list[str]:
    """Attention ms of every layer at each model's longest length."""
    out = []
    for model in sorted({r["model"] for r in records}):
        longest = max(r["length"] for r in records if r["model"] == model)
        mine = {r["label"]: r for r in records if r["model"] == model and r["length"] == longest}
        present = [label for label in labels if label in mine and mine[label]["layers"]]
        if not present:
            continue
        per_layer = {label: _per_layer(mine[label]) for label in present}
        layers = sorted({layer for v in per_layer.values() for layer in v})
        out += [f"Attention ms per layer, {model} at {_length(longest)}:", ""]
        out += ["| layer | " + " | ".join(present) + " |", "|---:|" + "---:|" * len(present)]
        out += [
            f"| {layer} | " + " | ".join(f"{per_layer[label].get(layer, float('nan')):.1f}" for label in present) + " |"
            for layer in layers
        ]
        out.append("")
    return out


def _per_layer(record: dict) -> dict[int, float]:
    totals: dict[int, float] = defaultdict(float)
    for entry in record["layers"]:
        totals[entry["layer"]] += entry["ms"]
    return dict(totals)


def provenance(records: list[dict]) -> list[str]:
    first = records[0]
    commands = sorted({r["command"] for r in records})
    versions = ", ".join(f"{k} {v}" for k, v in first["versions"].items())
    return [
        f"Device: {first['device']}; {versions}; dates {min(r['date'] for r in records)} to "
        f"{max(r['date'] for r in records)}.",
        f"Settings: impl {first['impl']}, SDPA backend {first['sdpa_backend']}, batch {first['batch']}, "
        f"KV cache built: {first['use_cache']}; all logits finite: {all(r['logits_finite'] for r in records)}.",
        "Commands (one per job):",
        "",
        *[f"    {c}" for c in commands],
    ]


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in records})
    labels = _order({r["label"] for r in records})
    fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 8), squeeze=False)
    for col, model in enumerate(models):
        mine = [r for r in records if r["model"] == model]
        ax = axes[0][col]
        for label in labels:
            points = sorted((r["length"], r["ttft_ms"] / 1e3) for r in mine if r["label"] == label)
            if points:
                ax.plot(*zip(*points, strict=False), marker="o", label=label)
        ax.set(
            title=f"{model}: time to first token", xlabel="prompt tokens", ylabel="TTFT (s)", xscale="log", yscale="log"
        )
        ax.legend(fontsize="small")
        longest = max(r["length"] for r in mine)
        ax = axes[1][col]
        for label in labels:
            r = next((r for r in mine if r["label"] == label and r["length"] == longest and r["layers"]), None)
            if r:
                per_layer = sorted(_per_layer(r).items())
                ax.plot(*zip(*per_layer, strict=False), marker=".", label=label)
        ax.set(title=f"{model} at {_length(longest)}: attention per layer", xlabel="layer", ylabel="ms")
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="sweep (or job) directories holding ttft.json files")
    parser.add_argument("--out", type=Path, required=True, help="output path without extension")
    args = parser.parse_args(argv)
    records = gather(args.dirs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(records, indent=1))
    args.out.with_suffix(".md").write_text(f"# {args.out.name}\n\n" + markdown(records))
    plot(records, args.out.with_suffix(".png"))
    print(f"{len(records)} jobs -> {args.out}.md, .json, .png")


if __name__ == "__main__":
    main()
