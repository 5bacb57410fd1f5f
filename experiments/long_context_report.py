"""The long-context app's report tables and plot, from its records (experiments/long_context.py)."""

from __future__ import annotations

import statistics
from pathlib import Path


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


def dynamic_table(records: list[dict], trianglemix_from: int) -> str:
    """Per length and rule, over the layers: density, mass kept and output error (medians, worst), summed
    times, and the TriangleMix combination (the rule below ``trianglemix_from``, the triangle's kernel from
    there on)."""
    if not records:
        return ""
    layers: dict[tuple[int, int], dict] = {}
    for r in records:  # a later record adds the rules an earlier one lacked
        merged = layers.setdefault((r["length"], r["layer"]), {**r, "rules": {}})
        merged["rules"].update(r["rules"])
    head = (
        "\n## Dynamic rules per layer (real q/k/v of one prompt; each rule alone in every layer)\n\n"
        "Output error: relative L2 distance to dense attention's output, over all rows and over the last 64 "
        "(where the answer's first token is read); medians over layers, worst in brackets. Times are sums over "
        "layers of per-layer medians; `total` is estimate + lowering + attention, what a prefill pays.\n\n"
        "| len | yarn | rule | layers | density | mass kept | error | error, last 64 rows | ms estimate+lowering | "
        "ms attention | ms total | ms dense (SDPA; cuDNN on CUDA) | dense / total | estimate / dense | ms TriangleMix + rule | "
        "vs rule alone |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for length in sorted({n for n, _ in layers}):
        rows = [layers[key] for key in sorted(layers) if key[0] == length]
        for rule in sorted({name for r in rows for name in r["rules"]}):
            have = [r for r in rows if rule in r["rules"]]
            m = [r["rules"][rule] for r in have]

            def med(key: str, m: list[dict] = m) -> str:
                return f"{statistics.median(x[key] for x in m):.3f} ({max(x[key] for x in m):.3f})"

            total = sum(x["ms_total"] for x in m)
            dense = sum(r["ms_dense"] for r in have)
            estimate = sum(x["ms_estimate"] for x in m)
            combined = sum(
                r["rules"][rule]["ms_total"] if r["layer"] < trianglemix_from else r["ms_triangle_kernel"] for r in have
            )
            lines.append(
                f"| {length} | {have[0]['yarn']} | {rule} | {len(have)} | "
                f"{statistics.median(x['density'] for x in m):.3f} | {statistics.median(x['kept'] for x in m):.3f} | "
                f"{med('error')} | {med('error_last')} | {estimate:.1f} | {sum(x['ms_attention'] for x in m):.1f} | "
                f"{total:.1f} | {dense:.1f} | {dense / total:.2f}x | {100 * estimate / dense:.1f}% | {combined:.1f} | "
                f"{100 * (1 - combined / total):+.1f}% |"
            )
    return head + "\n".join(lines) + "\n"


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
        counts = sorted({s["n"] for s in entries})
        shown = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        ax.set_title(f"{task} (n={shown} paired samples)", fontsize=9)
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel("RULER score (%)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title + " — whiskers: 95% paired-bootstrap CI of (schedule − dense)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
