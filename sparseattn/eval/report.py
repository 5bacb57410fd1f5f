"""Tables and plots from paired-evaluation rows: accuracy per system with intervals for the difference to dense."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from sparseattn.eval.paired_eval import DENSE
from sparseattn.eval.paired_stats import mcnemar_exact, paired_bootstrap_ci


def summarize(rows: Iterable[dict], *, base: str = DENSE, resamples: int = 10_000, seed: int = 0) -> list[dict]:
    """One entry per (task, length, system), paired with ``base`` on the samples both answered.

    Fidelity columns are always against dense (that is what the rows carry), whatever ``base`` is.
    """
    by_key: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for row in rows:
        by_key[(row["task"], row["length"], row["system"])][row["index"]] = row
    out = []
    for (task, length, system), got in sorted(by_key.items()):
        if system in (base, DENSE):
            continue
        dense = by_key[(task, length, base)]
        common = sorted(set(got) & set(dense))
        if not common:
            continue
        d = [dense[i] for i in common]
        s = [got[i] for i in common]
        ci = paired_bootstrap_ci([r["score"] for r in d], [r["score"] for r in s], resamples=resamples, seed=seed)
        test = mcnemar_exact([r["correct"] for r in d], [r["correct"] for r in s])
        out.append(
            {
                "task": task,
                "length": length,
                "system": system,
                "base": base,
                "n": len(common),
                "base_score": _mean(r["score"] for r in d),
                "score": _mean(r["score"] for r in s),
                "diff": ci.estimate,
                "diff_low": ci.low,
                "diff_high": ci.high,
                "only_base": test.only_a,
                "only_system": test.only_b,
                "mcnemar_p": test.p_value,
                "kl_first": _mean(r["kl_first"] for r in s),
                "kl_mean": _mean(r["kl_mean"] for r in s),
                "top1_first": _mean(r["top1_first"] for r in s),
                "top1_mean": _mean(r["top1_mean"] for r in s),
            }
        )
    return out


def markdown_table(summary: Sequence[dict]) -> str:
    head = (
        "| task | len | system | base | n | base score | system score | Δ (95% bootstrap CI) | base-only / system-only "
        "correct | McNemar p | KL vs dense, first tok | KL vs dense, mean | top-1 agree with dense |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {s['task']} | {s['length']} | {s['system']} | {s['base']} | {s['n']} | {100 * s['base_score']:.1f} | "
        f"{100 * s['score']:.1f} | {100 * s['diff']:+.1f} [{100 * s['diff_low']:+.1f}, {100 * s['diff_high']:+.1f}] | "
        f"{s['only_base']} / {s['only_system']} | {s['mcnemar_p']:.3g} | {s['kl_first']:.4f} | {s['kl_mean']:.4f} | "
        f"{100 * s['top1_mean']:.1f}% |"
        for s in summary
    ]
    return head + "\n".join(lines) + "\n"


def plot_accuracy(summary: Sequence[dict], path: str, title: str) -> None:
    """Bars: dense and each system per task; whiskers: the bootstrap interval of (system - dense)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({(s["task"], s["length"]) for s in summary})
    systems = sorted({s["system"] for s in summary})
    width = 0.8 / (len(systems) + 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(tasks)), 4))
    for t, key in enumerate(tasks):
        entries = {s["system"]: s for s in summary if (s["task"], s["length"]) == key}
        dense = next(iter(entries.values()))["base_score"]
        ax.bar(t, 100 * dense, width, color="0.6", label=DENSE if t == 0 else None)
        for j, system in enumerate(systems, 1):
            if system not in entries:
                continue
            e = entries[system]
            err = [[100 * (e["diff"] - e["diff_low"])], [100 * (e["diff_high"] - e["diff"])]]
            ax.bar(
                t + j * width,
                100 * e["score"],
                width,
                yerr=err,
                capsize=3,
                color=f"C{j - 1}",
                label=system if t == 0 else None,
            )
    ax.set_xticks([t + width * len(systems) / 2 for t in range(len(tasks))])
    counts = {(s["task"], s["length"]): s["n"] for s in summary}
    ax.set_xticklabels([f"{task}\n{length} tokens, n={counts[(task, length)]}" for task, length in tasks], fontsize=8)
    ax.set_ylabel("RULER score (%)")
    ax.set_title(f"{title}\nwhiskers: 95% paired-bootstrap CI of (system − dense), drawn around the system", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")
