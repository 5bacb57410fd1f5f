"""How much of a timed call is host work: enqueue time per call, and do_bench with and without a CUDA graph.

    PYTHONPATH=experiments python experiments/investigations/host_overhead.py --out $OUT     # on a CUDA machine

``triton.testing.do_bench`` times each call between two CUDA events; host work that outlasts the cache
flush queued before each call leaves the GPU idle inside that window. ``do_bench_cudagraph`` replays the
call from a CUDA graph, so the difference bounds what host overhead adds to the kernel benchmark's
figures. Writes ``host_overhead.json`` and ``host_overhead.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import triton
from harness import SHAPE, cudnn_dense, default_layout, enqueue_us, inputs, run_line, run_meta, write_json

from sparseattn.kernels.attention.launch import triton_sparse_attention
from sparseattn.patterns import Causal, Pattern, Streaming, Triangle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    args = parser.parse_args()
    cases: list[tuple[str, Pattern | None, int]] = [
        ("triangle", Triangle(), 8192),
        ("triangle", Triangle(), 32768),
        ("streaming", Streaming(128, 4096), 32768),
        ("causal", Causal(), 32768),
        ("cudnn dense causal", None, 32768),
    ]
    rows = []
    for name, pattern, n in cases:
        q, k, v = inputs(n)
        if pattern is None:

            def fn(q=q, k=k, v=v):
                return cudnn_dense(q, k, v)

        else:
            layout = default_layout(pattern, n)

            def fn(q=q, k=k, v=v, layout=layout):
                return triton_sparse_attention(q, k, v, layout)

        rows.append(
            {
                "case": name,
                "tokens": n,
                "enqueue_us": enqueue_us(fn, calls=200, batch=200),  # one batch: the device kept busy
                "do_bench_ms": triton.testing.do_bench(fn, return_mode="median"),
                "cudagraph_ms": triton.testing.do_bench_cudagraph(fn, return_mode="median"),
            }
        )
    meta = run_meta(__file__, args.out)
    write_json(args.out, "host_overhead", meta, rows)
    lines = [
        "# Host overhead in the timed calls",
        "",
        run_line(meta),
        f"{SHAPE}; medians.",
        "",
        "| case | tokens | host enqueue µs | do_bench ms | CUDA graph ms | do_bench / graph |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['tokens']} | {r['enqueue_us']:.0f} | {r['do_bench_ms']:.3f} | "
            f"{r['cudagraph_ms']:.3f} | {r['do_bench_ms'] / r['cudagraph_ms']:.3f} |"
        )
    (args.out / "host_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[4:]))


if __name__ == "__main__":
    main()
