"""Whether compiled ``create_block_mask`` materialises a per-head mixture's whole mask, by how its
mask_mod picks a head's predicate.

    python experiments/investigations/per_head_mask_mod_memory.py --length 8192 --out $OUT

The benchmarks' mixture (32 heads cycling causal, streaming, A-shape and triangle) asked an H100 for
512 GiB at 128K (`experiments/results/kernel_bench_128k_h100.md`) when its mask_mod chained one
``torch.where(h == i, ...)`` per head. `PerHead.mask_mod` now evaluates each distinct member once and
picks it through a head -> member table. Each way is built here in its own process, on the CPU, with
``create_block_mask(..., _compile=True)`` as `experiments/harness.py` builds Flex's masks; a process's
peak resident memory shows whether the 32 x L x L bool mask (2 GiB at 8K) was stored. Both block masks
must keep the same blocks.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from sparseattn.patterns import AShape, Causal, PerHead, Streaming, Triangle
from sparseattn.patterns.tiles import MaskContext

HEADS = 32


def mixture() -> PerHead:
    kinds = [Causal(), Streaming(sink=128, window=4096), AShape(sink_blocks=1, local_blocks=32, block_size=128)]
    kinds.append(Triangle(8, 512, 128))
    return PerHead(tuple(kinds[h % len(kinds)] for h in range(HEADS)))


def chained_mask_mod(pattern: PerHead, length: int):
    """The mask_mod as `PerHead` wrote it before: one ``where`` per head."""
    mods = [p.mask_mod(MaskContext(length, length)) for p in pattern.patterns]

    def mask_mod(b, h, q_idx, kv_idx):
        out = mods[-1](b, h, q_idx, kv_idx)
        for i in range(len(mods) - 2, -1, -1):
            out = torch.where(h == i, mods[i](b, h, q_idx, kv_idx), out)
        return out

    return mask_mod


def build(way: str, length: int) -> dict:
    from torch.nn.attention.flex_attention import create_block_mask

    pattern = mixture()
    mask_mod = chained_mask_mod(pattern, length) if way == "chain" else pattern.to_mask_mod(length, length)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="_compile flag")
        block_mask = create_block_mask(mask_mod, 1, HEADS, length, length, device="cpu", _compile=True)
    return {
        "way": way,
        "length": length,
        "seconds": round(time.perf_counter() - start, 1),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "partial_blocks": int(block_mask.kv_num_blocks.sum()),
        "full_blocks": int(block_mask.full_kv_num_blocks.sum()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--way", choices=["chain", "table"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.way:
        print(json.dumps(build(args.way, args.length)))
        return 0
    rows = []
    for way in ("table", "chain"):
        child = [sys.executable, __file__, "--way", way, "--length", str(args.length)]
        done = subprocess.run(child, check=True, capture_output=True, text=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    same = {(r["partial_blocks"], r["full_blocks"]) for r in rows}
    mask_gib = HEADS * args.length * args.length / 2**30
    lines = [
        "# A per-head mixture's mask_mod under compiled create_block_mask",
        "",
        f"`python experiments/investigations/per_head_mask_mod_memory.py --length {args.length}` on the CPU, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; torch {torch.__version__}. {HEADS} heads cycling causal, streaming, A-shape and triangle; "
        f"the whole bool mask would take {mask_gib:.1f} GiB. Each way in its own process.",
        "",
        "| mask_mod | seconds | peak resident MiB | partial blocks | full blocks |",
        "|---|---|---|---|---|",
    ]
    names = {"table": "distinct members through a head table (PerHead now)", "chain": "one where per head"}
    for r in rows:
        lines.append(
            f"| {names[r['way']]} | {r['seconds']} | {r['peak_rss_mib']} | {r['partial_blocks']} | {r['full_blocks']} |"
        )
    lines += ["", f"Same blocks: {'yes' if len(same) == 1 else 'no'}."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "per_head_mask_mod_memory.md").write_text(text)
        (args.out / "per_head_mask_mod_memory.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0 if len(same) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
