"""Fused estimation kernels against the torch operations they replace, same run, same inputs.

    PYTHONPATH=experiments python experiments/investigations/fused_estimation.py --out $OUT   # on a CUDA machine
    PYTHONPATH=experiments python experiments/investigations/fused_estimation.py --stages line_sums \
        --lengths 8192 32768 131072 --name line_sums --out $OUT

Each stage is checked and then timed both ways on the GPU, with the peak memory each way allocates:

- ``sampled_shares``: `BlockMass`'s ``triton_sampled_shares`` against ``torch_sampled_shares`` (the sampled
  rows' fp32 softmax over every key, written in chunks, summed per key block), whose memory traffic grows
  with the square of the length;
- ``line_sums``: vertical-slash's ``triton_line_sums`` (logits recomputed from q and k, never written)
  against the torch path it replaced on CUDA: the logits kernel, ``torch.softmax``, and the column and
  diagonal sums of `vs_scores`.

The first run (`experiments/results/fused_estimation.md`) timed an earlier line-sums kernel that still read
written logits; it was 8-15% slower than the torch operations and was removed.

Shapes: Qwen2.5-0.5B's layer (14 query / 2 kv heads, head dim 64) and Llama-3.1-8B's (32 / 8, 128), bf16
structured q/k (`harness.structured_qkv`). do_bench medians; rows are appended to ``fused_estimation.jsonl``
as they finish, ``fused_estimation.md`` is written at the end and the table printed last.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
from harness import run_line, run_meta, structured_qkv
from torch import Tensor
from tqdm import tqdm
from triton.testing import do_bench

from sparseattn.estimation.block_mass import sampled_rows, torch_sampled_shares
from sparseattn.estimation.vs_scores import column_sums, diagonal_sums, last_query_probs
from sparseattn.kernels.estimation.triton_line_sums import triton_line_sums
from sparseattn.kernels.estimation.triton_sampled_shares import triton_sampled_shares


def peak_mib(step: Callable[[], object]) -> float:
    """MiB that one call of ``step`` allocates above what was allocated before it."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def compare(stage: str, fused: Callable[[], Tensor], torch_path: Callable[[], Tensor]) -> dict:
    """Check the fused result against the torch path (fp32 summation order apart), then time both and
    measure their peak memory."""
    got, want = fused(), torch_path()
    return {
        "stage": stage,
        "max_rel_err": float(((got - want).abs() / want.abs().clamp(min=1e-3)).max()),
        "ok": torch.allclose(got, want, rtol=1e-3, atol=1e-6),
        "torch_ms": do_bench(torch_path),
        "fused_ms": do_bench(fused),
        "torch_mib": peak_mib(torch_path),
        "fused_mib": peak_mib(fused),
    }


def sampled_row(q: Tensor, k: Tensor, block: int, samples: int) -> dict:
    rows = sampled_rows(q.shape[2], block, samples, q.device)
    return compare(
        f"sampled shares ({samples} rows / {block}-key block)",
        lambda: triton_sampled_shares(q, k, rows, block),
        lambda: torch_sampled_shares(q, k, rows, block),
    )


def line_sums_row(q: Tensor, k: Tensor, last_q: int) -> dict:
    """Columns and diagonals stacked into one tensor, so one check covers both."""
    n, scale = min(last_q, q.shape[2]), q.shape[-1] ** -0.5

    def torch_path() -> Tensor:
        probs = last_query_probs(q, k, n, scale)
        return torch.stack([column_sums(probs), diagonal_sums(probs)])

    return compare(f"line sums (last {n} rows)", lambda: torch.stack(triton_line_sums(q, k, n, scale)), torch_path)


STAGES = {"sampled_shares": lambda q, k: sampled_row(q, k, 64, 4), "line_sums": lambda q, k: line_sums_row(q, k, 64)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/fused_estimation"))
    parser.add_argument("--lengths", type=int, nargs="+", default=[32768])
    parser.add_argument("--shapes", nargs="+", default=["14/2/64", "32/8/128"], help="heads/kv_heads/head_dim")
    parser.add_argument("--stages", nargs="+", choices=sorted(STAGES), default=sorted(STAGES))
    parser.add_argument("--name", default="fused_estimation", help="stem of the result files")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    meta = run_meta(__file__, args.out)
    records = args.out / f"{args.name}.jsonl"
    rows = []
    jobs = [(n, shape, stage) for n in args.lengths for shape in args.shapes for stage in args.stages]
    for n, shape, stage in tqdm(jobs, desc="cases"):
        heads, kv_heads, dim = (int(x) for x in shape.split("/"))
        q, k, _ = structured_qkv(heads, kv_heads, n, dim)
        row = {"length": n, "shape": shape, **STAGES[stage](q, k)}
        row["speedup"] = row["torch_ms"] / row["fused_ms"]
        rows.append(row)
        with records.open("a") as f:
            f.write(json.dumps(row) + "\n")
        del q, k
        torch.cuda.empty_cache()
    lines = [
        "# Fused estimation kernels against the torch operations they replace",
        "",
        run_line(meta),
        "",
        "Same inputs, same run; each fused result is checked against the torch path first (`ok`: within "
        "fp32 summation error; the largest relative difference, on entries above 1e-3, beside it). Peak "
        "memory: what one call allocates above the inputs.",
        "",
        "| length | Hq/Hkv/D | stage | ok | max rel err | torch ms | fused ms | speed-up | torch MiB | fused MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['length']} | {r['shape']} | {r['stage']} | {'yes' if r['ok'] else 'NO'} | {r['max_rel_err']:.1e} | "
        f"{r['torch_ms']:.3f} | {r['fused_ms']:.3f} | {r['speedup']:.2f}x | {r['torch_mib']:.0f} | "
        f"{r['fused_mib']:.0f} |"
        for r in rows
    ]
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    (args.out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
