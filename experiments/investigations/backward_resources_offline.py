"""Registers, spill stack and shared memory of the backward's dK/dV and dQ kernels per launch configuration,
compiled for Hopper (sm_90) without a GPU, as `triton_sparse_attention_backward` would launch them.

    PYTHONPATH=experiments python experiments/investigations/backward_resources_offline.py --out experiments/results
    PYTHONPATH=experiments python experiments/investigations/backward_resources_offline.py --kernels dq --out $OUT

One table per kernel (``backward_resources_offline.md`` for dK/dV, ``backward_dq_resources_offline.md`` for
dQ), columns named by the `BackwardConfig` fields varied. Head dim 128, bf16, 128 x 128 tiles, a dK/dV
program holding the whole 128-key block (the default since it measured 2.3x faster than 32-key programs
on an H100) or half of it: two fp32 [128, 128] accumulators alone take 128 registers per thread at 8
warps. The tables say which configurations spill least and which leave room for two programs per
multiprocessor, to choose what the GPU sweep (`experiments/tune_backward.py`) times first. The kernels
are compiled with the specialisation a launch applies (`resources._launch_specialisation`): key-major at
two stages takes 263,168 bytes here under Triton 3.7, exactly what an H100 asked for under Triton 3.6.

``flat_steps``: the tiles and their row (dK/dV) or column (dQ) steps walked as one pipelined loop, one set
of stage buffers for the loads instead of one per unrolled step. The last two columns say how the
kernel's products run (counted in the IR, so a loop's body counts once where unrolled steps count each):
on Hopper's warp-group MMA (wgmma), or on the warp-level mma.sync that Triton keeps for a product with
fewer than 64 rows in M. Query-major dK/dV steps of 16 or 32 rows put the scores and dP products (two of
the four) on mma.sync; key-major scores are ``[keys, rows]``, so all four products have M = keys and run
on wgmma.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import triton
from tqdm import tqdm

from sparseattn.kernels.attention.backward import default_backward_config
from sparseattn.kernels.attention.resources import HOPPER_SHARED_PER_SM, backward_resources
from sparseattn.lowering import lower
from sparseattn.patterns import Causal

# BackwardConfig fields varied per kernel, and their values: the dK/dV kernel's tiles, orientation, warps,
# stages and loop shape (one loop only where pipelined), then the dQ kernel's.
KERNELS = {
    "dkdv": (
        "_bwd_dkdv_kernel",
        "backward_resources_offline",
        ("keys", "key_major", "sub_m", "dkdv_warps", "dkdv_stages", "flat_steps"),
        [
            *itertools.product((128, 64), (False, True), (16, 32, 64), (8, 16), (1, 2), (False,)),
            *itertools.product((128, 64), (False, True), (32, 64), (8,), (2, 3), (True,)),
        ],
    ),
    "dq": (
        "_bwd_dq_kernel",
        "backward_dq_resources_offline",
        ("sub_n", "dq_warps", "dq_stages", "flat_steps"),
        list(itertools.product((64, 32), (8, 4), (2, 3), (False, True))),
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    parser.add_argument("--kernels", nargs="+", choices=sorted(KERNELS), default=sorted(KERNELS))
    args = parser.parse_args()
    layout = lower(Causal(), 1024, 1024, block_size=(128, 128))
    base = default_backward_config(layout, 128)
    command = "PYTHONPATH=experiments python experiments/investigations/backward_resources_offline.py " + " ".join(
        "$OUT" if a == str(args.out) else a for a in sys.argv[1:]
    )
    meta = {
        "command": command,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "triton": triton.__version__,
        "target": "sm_90 (compiled offline, no GPU)",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for which in args.kernels:
        kernel, stem, knobs, grid = KERNELS[which]
        rows = []
        for values in tqdm(grid, desc=f"{which} configurations"):
            r = backward_resources(layout, 128, dataclasses.replace(base, **dict(zip(knobs, values, strict=True))))[
                kernel
            ]
            rows.append(
                dict(zip(knobs, values, strict=True))
                | dict(
                    registers=r.registers, spill_bytes=r.stack_bytes, shared_bytes=r.shared_bytes,
                    programs_per_sm=r.programs_per_sm(), wgmma_dots=r.wgmma_dots, mma_sync_dots=r.mma_sync_dots,
                )
            )  # fmt: skip
        (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        lines = [
            f"# Backward {kernel} resources on sm_90, compiled offline",
            "",
            f"`{command}` — {meta['date']}, triton {meta['triton']}, {meta['target']}.",
            "",
            "Head dim 128, bf16, 128 x 128 tiles, the default's other knobs (`BackwardConfig` fields); "
            f"`programs/SM` by shared memory alone ({HOPPER_SHARED_PER_SM // 1024} KiB per multiprocessor).",
            "",
            "| " + " | ".join(knobs) + " | registers | spill bytes | shared KiB | programs/SM | wgmma products "
            "| mma.sync products |",
            "|" + "---|" * (len(knobs) + 6),
        ]
        for r in sorted(rows, key=lambda r: (r["spill_bytes"], r["shared_bytes"])):
            lines.append(
                "| " + " | ".join(str(r[k]) for k in knobs) + f" | {r['registers']} | {r['spill_bytes']} | "
                f"{r['shared_bytes'] / 1024:.0f} | {r['programs_per_sm']} | {r['wgmma_dots']} | {r['mma_sync_dots']} |"
            )
        (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines[-len(rows) - 2 :]))


if __name__ == "__main__":
    main()
