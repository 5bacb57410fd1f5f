"""How the kernel reads its tile lists, each way against the default, with cuDNN in the same run.

    PYTHONPATH=experiments python experiments/investigations/kernel_options.py --out $OUT     # on a CUDA machine

Variants (`KernelConfig` fields): ``full_runs`` on and off (FULL tiles of a run step from the run's
first block, against one index load per tile). Every variant runs on the default tile shape, warps,
stages, TMA and head packing of each case, is first checked against the fp32 reference on a 2K prompt
(`harness.correct`), then timed with ``triton.testing.do_bench`` (median). Writes
``kernel_options.json`` and ``kernel_options.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import triton
from harness import SHAPE, correct, cudnn_ms, default_layout, inputs, run_line, run_meta, write_json
from tqdm import tqdm

from sparseattn.kernels.attention.config import default_config
from sparseattn.kernels.attention.launch import triton_sparse_attention
from sparseattn.patterns import AShape, Causal, Pattern, PerHead, Streaming, Triangle

MIXTURE = PerHead(tuple([Causal(), Streaming(128, 4096), AShape(1, 32, 128), Triangle()][h % 4] for h in range(32)))
CASES: list[tuple[str, Pattern, int]] = [
    (name, pattern, n)
    for n in (32768, 131072)
    for name, pattern in [
        ("causal", Causal()),
        ("streaming", Streaming(128, 4096)),
        ("triangle", Triangle()),
        ("mixture", MIXTURE),
    ]
]
# Named option sets, each a set of `KernelConfig` overrides; "default" must be first.
VARIANTS: dict[str, dict[str, object]] = {
    "default": {},
    "FULL by runs": {"full_runs": True},
    "FULL by index": {"full_runs": False},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    parser.add_argument("--cases", nargs="*", default=[], help="only these, as pattern:tokens (causal:32768)")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), help="option sets, by name")
    args = parser.parse_args()
    cases = [c for c in CASES if not args.cases or f"{c[0]}:{c[2]}" in args.cases]
    cudnn = {n: cudnn_ms(n) for n in sorted({n for _, _, n in cases})}
    todo = [(case, variant) for case in cases for variant in ["default", *(v for v in args.variants if v != "default")]]
    rows = []
    for (name, pattern, n), variant in tqdm(todo, desc="options"):
        q, k, v = inputs(n)
        layout = default_layout(pattern, n)
        block = layout.block_size
        base = default_config(layout, 128, group=q.shape[1] // k.shape[1])
        config = dataclasses.replace(base, **VARIANTS[variant])  # type: ignore[arg-type]
        row = {"pattern": name, "tokens": n, "block": list(block), "variant": variant}
        row["config"] = dataclasses.asdict(config)
        row["max_err"] = correct(pattern, block, config)
        row["ms"] = triton.testing.do_bench(
            lambda q=q, k=k, v=v, layout=layout, config=config: triton_sparse_attention(q, k, v, layout, config=config),
            return_mode="median",
        )
        row["speedup_vs_cudnn"] = cudnn[n] / row["ms"]
        rows.append(row)
    meta = {**run_meta(__file__, args.out), "cudnn_ms": cudnn}
    write_json(args.out, "kernel_options", meta, rows)
    lines = [
        "# How the kernel reads its tile lists",
        "",
        run_line(meta),
        f"{SHAPE}; do_bench medians; each case on its default "
        "tiles, warps, stages, TMA and packing; cuDNN dense causal in the same run: "
        + ", ".join(f"{n}: {ms:.3f} ms" for n, ms in cudnn.items()),
        "",
        "Variants: " + "; ".join(f"{name}: {overrides or 'as default_config'}" for name, overrides in VARIANTS.items()),
        "",
        "| pattern | tokens | block | variant | max err | ms | vs default | vs cuDNN dense |",
        "|---|---|---|---|---|---|---|---|",
    ]
    default_ms = {(r["pattern"], r["tokens"]): r["ms"] for r in rows if r["variant"] == "default"}
    for r in rows:
        lines.append(
            f"| {r['pattern']} | {r['tokens']} | {r['block'][0]}x{r['block'][1]} | {r['variant']} | {r['max_err']:.1e} | "
            f"{r['ms']:.3f} | {default_ms[(r['pattern'], r['tokens'])] / r['ms']:.3f}x | {r['speedup_vs_cudnn']:.3f}x |"
        )
    (args.out / "kernel_options.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
