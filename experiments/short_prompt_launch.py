"""Triangle() on short prompts: where each launch's time goes, host against device.

    PYTHONPATH=. python experiments/short_prompt_launch.py --out $OUT      # on the GPU

At 8K keys a Triangle() call computes about 0.2 ms of tiles, the same order as the host's work to
enqueue it (0.16 ms for the Triton launch: call_time_breakdown.md). ``do_bench`` then times the host as
much as the kernel whenever the host falls behind. For each launch this measures the host's enqueue time
per call, the ``do_bench`` median and the same call replayed from a CUDA graph (device time only, L2 warm),
against dense causal on 128 x 128 tiles at the same length; and for the persistent warp-specialised
call, the host time of its parts and its cProfile. Writes ``short_prompt_launch.json``,
``short_prompt_launch.md`` and ``short_prompt_launch_profile_<tokens>.txt``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
import triton
from kernel_runs import (
    HEAD_DIM,
    HEADS,
    KV_HEADS,
    SHAPE,
    computed_tflops,
    correct,
    enqueue_us,
    inputs,
    run_line,
    run_meta,
    write_json,
)
from tqdm import tqdm

from sparseattn.kernels import gluon_fwd
from sparseattn.kernels.attention.config import LOG2E, default_config
from sparseattn.kernels.attention.launch import _new_outputs, _placeholder, triton_sparse_attention
from sparseattn.kernels.attention.triton_merge import merge_partials
from sparseattn.kernels.planning.work_list import work_list
from sparseattn.lowering import lower
from sparseattn.patterns import Causal, Triangle


def host_profile(fn: Callable[[], object], calls: int = 200, batch: int = 10) -> str:
    """cProfile's top entries (by own time) over ``calls`` calls, in synchronised batches."""
    profile = cProfile.Profile()
    fn()
    for _ in range(calls // batch):
        torch.cuda.synchronize()
        profile.enable()
        for _ in range(batch):
            fn()
        profile.disable()
    torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(30)
    return text.getvalue()


def host_parts(q, k, v, layout, config) -> dict[str, float]:
    """Host µs of the warp-specialised call's parts, each enqueued alone."""
    work = work_list(layout, 1, HEADS, pack=1)
    outputs = _new_outputs(q, max(work.num_slots, 1), layout.block_m)
    unused = _placeholder(q.device)
    lists = tuple(
        unused if t is None or t.numel() == 0 else t
        for t in (layout.full_kv_indices, layout.kv_indices, layout.kv_mask_ids, layout.tile_masks)
    )
    scale = HEAD_DIM**-0.5 * LOG2E
    box = [gluon_fwd.HALF_ROWS, HEAD_DIM]
    return {
        "work list (cached)": enqueue_us(lambda: work_list(layout, 1, HEADS, pack=1)),
        "outputs and scratch": enqueue_us(lambda: _new_outputs(q, max(work.num_slots, 1), layout.block_m)),
        "one descriptor": enqueue_us(lambda: gluon_fwd._descriptor(q.view(-1, HEAD_DIM), box)),
        "Gluon launch": enqueue_us(
            lambda: gluon_fwd.gluon_sparse_attention(q, k, v, layout.block_n, work, lists, outputs, scale, config)
        ),
        "merge launch": enqueue_us(lambda: merge_partials(*outputs, work.merges, layout.block_m)),
        "whole call": enqueue_us(lambda: triton_sparse_attention(q, k, v, layout, config=config)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    parser.add_argument("--lengths", type=int, nargs="*", default=[2048, 4096, 8192, 16384])
    args = parser.parse_args()
    group = HEADS // KV_HEADS
    rows, parts = [], []
    for n in tqdm(args.lengths, desc="lengths"):
        q, k, v = inputs(n)
        dense = lower(Causal(), n, block_size=(128, 128), device="cuda")
        small = lower(Triangle(), n, block_size=(32, 32), device="cuda")
        big = lower(Triangle(), n, block_size=(128, 128), device="cuda")
        ws = default_config(big, HEAD_DIM, group)
        cases = [
            ("causal 128x128, default", dense, default_config(dense, HEAD_DIM, group), {}),
            ("triangle 32x32, Triton default", small, default_config(small, HEAD_DIM, group), {}),
            ("triangle 128x128, persistent, balanced", big, replace(ws, persistent=True), {}),
            ("triangle 128x128, persistent, heavy first, no split", big, replace(ws, persistent=True),
             {"heavy_first": True, "max_chunk": 0}),
            ("triangle 128x128, persistent, grid order, no split", big, replace(ws, persistent=True),
             {"heavy_first": False, "max_chunk": 0}),
            ("triangle 128x128, a program per item, balanced", big, replace(ws, persistent=False), {}),
        ]  # fmt: skip
        for name, layout, config, knobs in cases:
            err = correct(Causal() if name.startswith("causal") else Triangle(), layout.block_size, config)
            if not err < 0.02:
                raise RuntimeError(f"{name}: max error {err} against the fp32 reference")

            def fn(q=q, k=k, v=v, layout=layout, config=config, knobs=knobs):
                return triton_sparse_attention(q, k, v, layout, config=config, **knobs)

            do_bench = triton.testing.do_bench(fn, return_mode="median")
            graph = triton.testing.do_bench_cudagraph(fn, return_mode="median")
            rows.append({
                "tokens": n, "variant": name, "max_err": err, "host_us": enqueue_us(fn), "do_bench_ms": do_bench,
                "graph_ms": graph, "graph_tflops": computed_tflops(layout, graph),
                "do_bench_tflops": computed_tflops(layout, do_bench),
            })  # fmt: skip
        parts.append({"tokens": n, **host_parts(q, k, v, big, replace(ws, persistent=True))})
        profile = host_profile(lambda q=q, k=k, v=v, big=big: triton_sparse_attention(q, k, v, big))
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"short_prompt_launch_profile_{n}.txt").write_text(profile)
    meta = run_meta("short_prompt_launch.py", args.out)
    write_json(args.out, "short_prompt_launch", meta, rows + parts)
    lines = [
        "# Triangle() on short prompts: host and device time per launch",
        "",
        run_line(meta),
        f"{SHAPE}. `host µs`: median enqueue time per call with the device queue absorbing the calls; "
        "`do_bench`: its median (L2 flushed before each call); `graph`: the call replayed back to back from a CUDA graph, without the L2 flush "
        "(device time only); TFLOP/s count 4·D flops per pair of the computed tiles.",
        "",
        "| tokens | variant | host µs | do_bench ms | graph ms | TFLOP/s (do_bench) | TFLOP/s (graph) | max err |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['tokens']} | {r['variant']} | {r['host_us']:.0f} | {r['do_bench_ms']:.3f} | {r['graph_ms']:.3f} | "
            f"{r['do_bench_tflops']:.0f} | {r['graph_tflops']:.0f} | {r['max_err']:.1e} |"
        )
    names = [key for key in parts[0] if key != "tokens"]
    lines += ["", "Host µs of the persistent warp-specialised call's parts:", "",
              "| tokens | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]  # fmt: skip
    lines += [f"| {p['tokens']} | " + " | ".join(f"{p[key]:.0f}" for key in names) + " |" for p in parts]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "short_prompt_launch.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
