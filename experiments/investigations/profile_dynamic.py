"""Where the time of dynamic estimation and lowering goes: a CUDA-kernel breakdown per stage at 128K.

For block top-k and vertical-slash (the shapes of ``bench_dynamic.py``) this profiles, with
``torch.profiler``, each stage the overhead target counts (estimate, lower) and the step the attention
call adds for a fresh layout (building its work list), then prints the kernels by device time and
writes the tables to ``--out``:

    PYTHONPATH=experiments python experiments/investigations/profile_dynamic.py --out $OUT
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from harness import structured_qkv
from torch.profiler import ProfilerActivity, profile
from triton.testing import do_bench

from sparseattn.estimation import BlockTopK, VerticalSlash
from sparseattn.kernels.attention.launch import triton_sparse_attention
from sparseattn.kernels.planning.work_list import work_list
from sparseattn.lowering import lower


def table(fn, rows: int = 14) -> str:
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="self_device_time_total", row_limit=rows, max_name_column_width=70)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--length", type=int, default=131072)
    parser.add_argument("--out", default="experiments/results")
    args = parser.parse_args()
    n = args.length
    q, k, v = structured_qkv(32, 8, n, 128, seed=0)
    out = Path(os.environ.get("OUT") or args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = []
    for tag, pattern in (("block_topk", BlockTopK(topk=64)), ("vertical_slash", VerticalSlash(512, 2048))):
        concrete = pattern.estimate(q, k)
        layout = lower(concrete, n, n)
        triton_sparse_attention(q, k, v, layout)
        stages = {
            "estimate": lambda pattern=pattern: pattern.estimate(q, k),
            "lower": lambda concrete=concrete: lower(concrete, n, n),
            "work_list_of_a_fresh_layout": lambda concrete=concrete: work_list(lower(concrete, n, n), 1, 32),
        }
        for stage, fn in stages.items():
            ms = do_bench(fn, warmup=3, rep=30, return_mode="median")
            report.append(f"## {tag}: {stage} ({ms:.3f} ms median, do_bench)\n\n```\n{table(fn)}\n```\n")
            print(report[-1], flush=True)
        attention = do_bench(lambda layout=layout: triton_sparse_attention(q, k, v, layout), return_mode="median")
        end_to_end = do_bench(
            lambda pattern=pattern: triton_sparse_attention(q, k, v, lower(pattern.estimate(q, k), n, n)),
            return_mode="median",
        )
        line = (
            f"{tag}: attention on a cached layout {attention:.3f} ms; estimate + lower + work list + attention "
            f"{end_to_end:.3f} ms; overhead {100 * (end_to_end - attention) / attention:.1f}%"
        )
        report.append(line + "\n")
        print(line, flush=True)
    (out / "profile_dynamic.md").write_text("\n".join(report))


if __name__ == "__main__":
    main()
