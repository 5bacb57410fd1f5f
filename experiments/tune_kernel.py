"""Sweep the kernel's launch options per pattern, with cuDNN timed in the same run.

    python experiments/tune_kernel.py --out experiments/results   # on a CUDA machine

Options: tile shape with its warp count and the query heads packed per program (``pack``: heads of one
kv head sharing each K/V tile), pipeline depth, K/V loads through tensor descriptors (TMA), FULL tiles
by runs or by index (``full_runs``), a register cap, the query block kept in registers
(``q_in_registers``). Each configuration is first checked against the fp32 reference on a short prompt (a miscompiled
configuration must not win), then timed with ``triton.testing.do_bench`` (median). Writes
``kernel_tuning.json`` and ``kernel_tuning.md``, with TFLOP/s over the tiles each layout computes (4·D
flops per computed query-key pair, as ``bench_kernel.py`` counts them) so that tile shapes compare.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import triton
from harness import SHAPE, computed_tflops, correct, cudnn_ms, inputs, run_line, run_meta, write_json
from tqdm import tqdm

from sparseattn.kernels.attention.config import KernelConfig
from sparseattn.kernels.attention.launch import triton_sparse_attention
from sparseattn.lowering import lower
from sparseattn.patterns import Causal, Pattern, Triangle

# (tile shape, warps, heads per program): the pairs measured best before, and head packing around
# them (earlier sweeps, including heavy-first orders and warp specialisation, are in git history).
SHAPES = {
    "causal": [((128, 128), 8, 1), ((128, 64), 4, 1), ((64, 64), 4, 2)],
    "triangle": [
        ((64, 64), 4, 2),
        ((128, 64), 4, 1),
        ((128, 64), 8, 1),
        ((128, 64), 8, 2),
        ((64, 64), 8, 2),
        ((64, 32), 4, 2),
        ((64, 32), 8, 2),
        ((64, 32), 8, 4),
        ((32, 64), 4, 4),
        ((32, 64), 4, 2),
        ((32, 64), 8, 4),
        ((32, 32), 4, 4),
        ((32, 32), 8, 4),
        ((32, 32), 4, 2),
        ((32, 32), 4, 1),
    ],
}
STAGES = {"causal": [2, 3], "triangle": [2, 3, 4]}
TMA = {"causal": [True], "triangle": [True]}
# FULL tiles by runs (``KernelConfig.full_runs``) or by index.
RUNS = {"causal": [True], "triangle": [False, True]}
# Register cap per thread (``KernelConfig.max_registers``; None: the compiler's choice).
REGISTERS = {"causal": [None], "triangle": [None, 128, 160, 168]}
# Query block kept in registers as the first matmul's operand (``KernelConfig.q_in_registers``).
Q_REGISTERS = {"causal": [False, True], "triangle": [False, True]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    parser.add_argument("--cases", nargs="*", default=[], help="only these, as pattern:tokens (causal:32768)")
    parser.add_argument("--stages", type=int, nargs="*", default=[], help="only these pipeline depths")
    parser.add_argument("--tma", choices=["on", "off"], help="only TMA loads on, or off")
    parser.add_argument("--runs", choices=["on", "off"], help="only FULL runs on, or off")
    parser.add_argument(
        "--chunks", type=int, nargs="*", default=[], help="longest split chunk in tiles to sweep (0: no split)"
    )
    parser.add_argument("--registers", type=int, nargs="*", default=[], help="only these caps (0: none)")
    parser.add_argument("--shapes", nargs="*", default=[], help="only these tile shapes (64x32)")
    parser.add_argument("--q-registers", choices=["on", "off"], help="only the query block in registers, or not")
    parser.add_argument("--packs", type=int, nargs="*", default=[], help="only these query heads per program")
    args = parser.parse_args()
    cases: list[tuple[str, Pattern, int]] = [
        ("causal", Causal(), 8192),
        ("causal", Causal(), 32768),
        ("causal", Causal(), 65536),
        ("causal", Causal(), 131072),
        ("triangle", Triangle(), 8192),
        ("triangle", Triangle(), 32768),
        ("triangle", Triangle(), 131072),
    ]
    if args.cases:
        cases = [c for c in cases if f"{c[0]}:{c[2]}" in args.cases]
    rows = []
    cudnn = {n: cudnn_ms(n) for n in sorted({n for _, _, n in cases})}
    todo = [
        (case, (block, warps, pack, stages, tma, runs, regs, q_regs), chunk)
        for case in cases
        for chunk in args.chunks or [None]
        for (block, warps, pack), stages, tma, runs, regs, q_regs in itertools.product(
            SHAPES[case[0]],
            STAGES[case[0]],
            TMA[case[0]],
            RUNS[case[0]],
            REGISTERS[case[0]],
            Q_REGISTERS[case[0]],
        )
        if (not args.stages or stages in args.stages)
        and (args.tma is None or tma == (args.tma == "on"))
        and (args.runs is None or runs == (args.runs == "on"))
        and (not args.shapes or f"{block[0]}x{block[1]}" in args.shapes)
        and (not args.registers or (regs or 0) in args.registers)
        and (args.q_registers is None or q_regs == (args.q_registers == "on"))
        and (not args.packs or pack in args.packs)
        and (tma or not q_regs)
    ]
    for (name, pattern, n), (block, warps, pack, stages, tma, runs, regs, q_regs), chunk in tqdm(todo, desc="configs"):
        config = KernelConfig(
            num_warps=warps,
            num_stages=stages,
            tma=tma,
            pack=pack,
            full_runs=runs,
            max_registers=regs,
            q_in_registers=q_regs,
        )
        row = {"pattern": name, "tokens": n, "block": list(block), "num_warps": warps, "num_stages": stages}
        row.update(tma=tma, pack=pack, full_runs=runs, max_registers=regs, q_in_registers=q_regs, max_chunk=chunk)
        try:
            row["max_err"] = correct(pattern, block, config)
            q, k, v = inputs(n)
            layout = lower(pattern, n, block_size=block, device="cuda")
            row["ms"] = triton.testing.do_bench(
                lambda q=q, k=k, v=v, layout=layout, config=config, chunk=chunk: triton_sparse_attention(
                    q, k, v, layout, config=config, max_chunk=chunk
                ),
                return_mode="median",
            )
            row["speedup_vs_cudnn"] = cudnn[n] / row["ms"]
            row["tflops"] = computed_tflops(layout, row["ms"])
        except Exception as exc:  # a configuration that does not compile (shared memory) is recorded, not fatal
            row["error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
        rows.append(row)
    meta = {**run_meta(__file__, args.out), "cudnn_ms": cudnn}
    write_json(args.out, "kernel_tuning", meta, rows)
    lines = [
        "# Kernel tuning sweep",
        "",
        run_line(meta),
        f"{SHAPE}; do_bench medians; cuDNN dense causal in the same run: "
        + ", ".join(f"{n}: {ms:.3f} ms" for n, ms in cudnn.items()),
        "",
        "| pattern | tokens | block | warps | heads/program | stages | TMA | FULL runs | registers | Q in registers "
        "| max chunk | max err | ms | TFLOP/s | vs cuDNN dense |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["pattern"], r["tokens"], r.get("ms", float("inf")))):
        head = (
            f"| {r['pattern']} | {r['tokens']} | {r['block'][0]}x{r['block'][1]} | {r['num_warps']} | "
            f"{r['pack']} | {r['num_stages']} | {'yes' if r['tma'] else 'no'} | {'yes' if r['full_runs'] else 'no'} | "
            f"{r.get('max_registers') or 'any'} | {'yes' if r.get('q_in_registers') else 'no'} | "
            f"{'default' if r.get('max_chunk') is None else r['max_chunk']} |"
        )
        if "error" in r:
            lines.append(f"{head} — | {r['error']} | — | — |")
        else:
            lines.append(
                f"{head} {r['max_err']:.1e} | {r['ms']:.3f} | {r['tflops']:.0f} | {r['speedup_vs_cudnn']:.2f}x |"
            )
    (args.out / "kernel_tuning.md").write_text("\n".join(lines) + "\n")
    best = {}
    for r in rows:
        if "ms" in r and r["max_err"] < 0.05:
            key = (r["pattern"], r["tokens"])
            if key not in best or r["ms"] < best[key]["ms"]:
                best[key] = r
    print("\nbest per case:")
    for (name, n), r in best.items():
        print(
            f"  {name:9s} {n:7d}  {r['block']} w{r['num_warps']} pack{r['pack']} s{r['num_stages']} "
            f"tma={r['tma']} runs={r['full_runs']} regs={r['max_registers']} q_regs={r['q_in_registers']}  "
            f"{r['ms']:.3f} ms  {r['tflops']:.0f} TFLOP/s  {r['speedup_vs_cudnn']:.2f}x cuDNN"
        )


if __name__ == "__main__":
    main()
