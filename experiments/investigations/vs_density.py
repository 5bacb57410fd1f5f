"""How much of the causal plane a vertical-slash layout covers, on random q/k and on structured q/k.

    PYTHONPATH=experiments python experiments/investigations/vs_density.py          # CPU; writes experiments/results/vs_density.{json,md}

The TTFT runs use models with random weights, whose queries and keys carry no positional structure;
`bench_dynamic.py` uses structured synthetic q/k (a shared direction, rotary positions, sinks). This
estimates VerticalSlash(512, 2048) in its block form on both kinds at a few lengths and reports the
fraction of the causal query-key pairs its layout computes, which is what its attention time tracks.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

import torch
from harness import structured_qkv
from tqdm import tqdm

from sparseattn.estimation import VerticalSlash
from sparseattn.lowering import lower

HEADS, KV_HEADS, DIM = 8, 2, 128


def random_qk(length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, HEADS, length, DIM, generator=gen)
    k = torch.randn(1, KV_HEADS, length, DIM, generator=gen)
    return q, k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "results")
    parser.add_argument("--lengths", type=int, nargs="*", default=[8192, 16384, 32768])
    args = parser.parse_args()
    pattern = VerticalSlash(vertical=512, slash=2048)
    rows = []
    for n in tqdm(args.lengths, desc="lengths"):
        inputs = {
            "random": random_qk(n, seed=0),
            "structured": structured_qkv(HEADS, KV_HEADS, n, DIM, seed=0, device="cpu", dtype=torch.float32)[:2],
        }
        for kind, (q, k) in inputs.items():
            layout = lower(pattern.estimate(q, k), n, n, num_heads=HEADS)
            causal_pairs = n * (n + 1) // 2
            rows.append(
                {
                    "qk": kind,
                    "tokens": n,
                    "fraction_of_causal": layout.computed_pairs() / (HEADS * causal_pairs),
                    "full_tiles": layout.num_tiles()[0],
                    "partial_tiles": layout.num_tiles()[1],
                }
            )
    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "pattern": repr(pattern),
        "shape": f"{HEADS} q heads, {KV_HEADS} kv heads, head dim {DIM}, fp32 on the CPU",
        "command": "PYTHONPATH=experiments python experiments/investigations/vs_density.py",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vs_density.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        "# Vertical-slash layout coverage: random against structured q/k",
        "",
        f"`{meta['command']}` — {meta['date']}, torch {meta['torch']}; `{meta['pattern']}`, {meta['shape']}.",
        "Fraction of the causal query-key pairs the layout computes (gathered columns included).",
        "",
        "| q/k | tokens | fraction of causal | full tiles | partial tiles |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['qk']} | {r['tokens']} | {r['fraction_of_causal']:.3f} | {r['full_tiles']:,} | {r['partial_tiles']:,} |"
        )
    (args.out / "vs_density.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[5:]))


if __name__ == "__main__":
    main()
