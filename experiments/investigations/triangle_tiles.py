"""Triangle() on each tile shape and launch: time, and TFLOP/s on computed tiles.

    PYTHONPATH=experiments python experiments/investigations/triangle_tiles.py --out $OUT      # on the GPU

On 32 x 32 tiles with Triton's launch (two heads per program) Triangle() computes the fewest pairs but
runs at about two thirds of our dense rate. 128 x 128 tiles compute more pairs (1.27 times as many at
32K), on the warp-specialised Gluon launch that runs dense rows at cuDNN's rate or above: with a program
per item, persistent, and persistent with ping-pong turns. This times them, and 64 x 64, against our
kernel on dense causal (128 x 128, with a program per item and persistent; `of dense` is against the
faster) and cuDNN in the same rounds, after checking each launch against the fp32 reference on a 2K
prompt. Writes ``triangle_tiles.json`` and ``triangle_tiles.md``.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace
from pathlib import Path

from harness import (
    HEAD_DIM,
    HEADS,
    KV_HEADS,
    SHAPE,
    computed_tflops,
    correct,
    cudnn_dense,
    inputs,
    run_line,
    run_meta,
    spread,
    timed_rounds,
    write_json,
)

from sparseattn.kernels.attention.config import default_config
from sparseattn.kernels.attention.launch import triton_sparse_attention
from sparseattn.lowering import lower
from sparseattn.patterns import Causal, Triangle

SHAPES = ((32, 32), (64, 64), (128, 128))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    parser.add_argument("--lengths", type=int, nargs="*", default=[32768, 131072])
    parser.add_argument("--rounds", type=int, default=3, help="timings per variant, taken in turn")
    args = parser.parse_args()
    group = HEADS // KV_HEADS
    rows = []
    for n in args.lengths:
        q, k, v = inputs(n)
        cases = [("causal", Causal(), (128, 128))] + [("triangle", Triangle(), shape) for shape in SHAPES]
        launches = [lambda q=q, k=k, v=v: cudnn_dense(q, k, v)]
        found = [{"tokens": n, "variant": "cuDNN SDPA dense causal"}]
        for name, pattern, shape in cases:
            layout = lower(pattern, n, block_size=shape, device="cuda")
            config = default_config(layout, HEAD_DIM, group)
            configs = [config]
            if config.warp_specialized:
                configs = [replace(config, persistent=False), replace(config, persistent=True)]
                if name == "triangle":
                    configs.append(replace(config, persistent=True, ping_pong=True))
            for config in configs:
                err = correct(pattern, shape, config)
                if not err < 0.02:
                    raise RuntimeError(f"{name} on {shape}, {config}: max error {err} against the fp32 reference")
                launch = f"Triton, {config.pack} head(s) per program"
                if config.warp_specialized:
                    launch = (
                        f"warp-specialised, {config.num_stages} stages, "
                        + ("persistent" if config.persistent else "a program per item")
                        + (", ping-pong" if config.ping_pong else "")
                    )
                found.append({"tokens": n, "variant": f"{name}, {shape[0]}x{shape[1]} tiles ({launch})",
                              "layout": layout, "max_err": err})  # fmt: skip
                launches.append(
                    lambda q=q, k=k, v=v, layout=layout, c=config: triton_sparse_attention(q, k, v, layout, config=c)
                )
        for row, ms_rounds in zip(found, timed_rounds(launches, args.rounds), strict=True):
            row["ms_rounds"] = ms_rounds
            row["ms"] = statistics.median(ms_rounds)
            layout = row.pop("layout", None)
            row["tflops"] = computed_tflops(layout, row["ms"]) if layout is not None else None
        dense = max(r["tflops"] for r in found[1:] if r["variant"].startswith("causal"))
        for row in found:
            row["of_dense"] = row["tflops"] / dense if row["tflops"] else None
            row["vs_cudnn"] = found[0]["ms"] / row["ms"]
        rows += found
    meta = run_meta(__file__, args.out)
    write_json(args.out, "triangle_tiles", meta, rows)
    lines = [
        "# Triangle() on each tile shape, against dense causal",
        "",
        run_line(meta),
        f"{SHAPE}; do_bench medians, {args.rounds} rounds in turn (`ms`: median round; `range`: fastest and "
        "slowest); TFLOP/s count 4·D flops per pair of the computed tiles; `of dense`: that rate as a share of "
        "our kernel's on dense causal in the same rounds; `vs cuDNN`: speed against cuDNN dense causal.",
        "",
        "| tokens | variant | ms | range | TFLOP/s | of dense | vs cuDNN | max err |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tflops = f"{r['tflops']:.0f}" if r["tflops"] else "—"
        of_dense = f"{r['of_dense']:.0%}" if r["of_dense"] else "—"
        err = f"{r['max_err']:.1e}" if "max_err" in r else "—"
        lines.append(
            f"| {r['tokens']} | {r['variant']} | {r['ms']:.3f} | {spread(r['ms_rounds'])} | {tflops} | {of_dense} | "
            f"{r['vs_cudnn']:.2f}x | {err} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "triangle_tiles.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
