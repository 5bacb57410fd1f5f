"""Registers, spill stack and shared memory of the backward's dK/dV kernel per launch configuration,
compiled for Hopper (sm_90) without a GPU, as `triton_sparse_attention_backward` would launch it.

    PYTHONPATH=experiments python experiments/investigations/backward_resources_offline.py --out experiments/results

Head dim 128, bf16, 128 x 128 tiles, a dK/dV program holding the whole 128-key block (the default since
it measured 2.3x faster than 32-key programs on an H100) or half of it: two fp32 [128, 128] accumulators
alone take 128 registers per thread at 8 warps. This table says which configurations spill least and
which leave room for two programs per multiprocessor, to choose what the GPU sweep
(`experiments/tune_backward.py`) times first. The kernels are compiled with the specialisation a launch
applies (`resources._launch_specialisation`): key-major at two stages takes 263,168 bytes here under
Triton 3.7, exactly what an H100 asked for under Triton 3.6.

`one loop`: the tiles and their row steps walked as one pipelined loop (`BackwardConfig.flat_steps`), one
set of stage buffers for Q and dO instead of one per unrolled row step. The last two columns say how the
kernel's products run (counted in the IR, so a loop's body counts once where unrolled steps count each):
on Hopper's warp-group MMA (wgmma), or on the warp-level mma.sync that Triton keeps for a product with
fewer than 64 rows in M. Query-major steps of 16 or 32 rows put the scores and dP products (two of the
four) on mma.sync; key-major scores are ``[keys, rows]``, so all four products have M = keys and run on
wgmma.
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

# keys per program, key-major scores, query rows per step, warps, pipeline stages, one loop over (tile, step)
GRID = [
    *itertools.product((128, 64), (False, True), (16, 32, 64), (8, 16), (1, 2), (False,)),
    *itertools.product((128, 64), (False, True), (32, 64), (8,), (2, 3), (True,)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    args = parser.parse_args()
    layout = lower(Causal(), 1024, 1024, block_size=(128, 128))
    base = default_backward_config(layout, 128)
    rows = []
    for keys, key_major, sub_m, warps, stages, flat in tqdm(GRID, desc="dK/dV configurations"):
        config = dataclasses.replace(
            base, keys=keys, key_major=key_major, sub_m=sub_m, dkdv_warps=warps, dkdv_stages=stages, flat_steps=flat
        )
        r = backward_resources(layout, 128, config)["_bwd_dkdv_kernel"]
        rows.append(
            dict(
                keys=keys, key_major=key_major, sub_m=sub_m, warps=warps, stages=stages, flat_steps=flat,
                registers=r.registers, spill_bytes=r.stack_bytes, shared_bytes=r.shared_bytes,
                programs_per_sm=r.programs_per_sm(), wgmma_dots=r.wgmma_dots, mma_sync_dots=r.mma_sync_dots,
            )
        )  # fmt: skip
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
    (args.out / "backward_resources_offline.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        "# Backward dK/dV kernel resources on sm_90, compiled offline",
        "",
        f"`{command}` — {meta['date']}, triton {meta['triton']}, {meta['target']}.",
        "",
        "Head dim 128, bf16, 128 x 128 tiles, the default's other knobs; `programs/SM` "
        f"by shared memory alone ({HOPPER_SHARED_PER_SM // 1024} KiB per multiprocessor).",
        "",
        "| keys | key-major | rows per step | one loop | warps | stages | registers | spill bytes | shared KiB "
        "| programs/SM | wgmma products | mma.sync products |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["spill_bytes"], r["shared_bytes"])):
        lines.append(
            f"| {r['keys']} | {r['key_major']} | {r['sub_m']} | {r['flat_steps']} | {r['warps']} | {r['stages']} | "
            f"{r['registers']} | "
            f"{r['spill_bytes']} | {r['shared_bytes'] / 1024:.0f} | {r['programs_per_sm']} | {r['wgmma_dots']} | "
            f"{r['mma_sync_dots']} |"
        )
    (args.out / "backward_resources_offline.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-len(rows) - 2 :]))


if __name__ == "__main__":
    main()
