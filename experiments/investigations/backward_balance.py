"""How unequal are the backward's dK/dV programs? Counted on the layouts, no GPU needed.

    PYTHONPATH=experiments python experiments/investigations/backward_balance.py

A dK/dV program owns one (kv head, key block) and walks every query tile that touches the key block, for
each query head of the kv head's group (`kernels/planning/dkdv_work.py`). The kernel lasts at least as long
as its longest program, so the ratio of that program's tile steps to an even share of all steps over the
GPU's multiprocessors bounds what splitting long programs (`BackwardConfig.max_chunk`) can recover. Shape of
the backward benchmark: 32 query / 8 kv heads, 128 x 128 tiles; 132 multiprocessors (an H100 SXM).
Writes ``backward_balance.md`` and prints it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sparseattn.kernels.planning.kv_major import kv_major
from sparseattn.lowering import lower
from sparseattn.patterns import AShape, Causal, Streaming, Triangle

PATTERNS = {
    "causal": Causal(),
    "triangle": Triangle(sink=8, window=512, last=128),
    "streaming": Streaming(sink=128, window=4096),
    "ashape": AShape(sink_blocks=1, local_blocks=32, block_size=128),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "results")
    parser.add_argument("--lengths", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument("--sms", type=int, default=132)
    args = parser.parse_args()
    heads, kv_heads = 32, 8
    group = heads // kv_heads
    lines = [
        "# Backward balance: the longest dK/dV program against an even share",
        "",
        "`PYTHONPATH=experiments python experiments/investigations/backward_balance.py`; 32 query / 8 kv heads, "
        f"128 x 128 tiles, {args.sms} multiprocessors; a step is one query tile of one query head.",
        "",
        "| pattern | tokens | programs | longest program (steps) | mean | even share per multiprocessor | longest / even share |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, pattern in PATTERNS.items():
        for n in args.lengths:
            steps = kv_major(lower(pattern, n, n, block_size=(128, 128))).tiles_per_key_block().flatten() * group
            programs = steps.numel() * kv_heads
            even = float(steps.sum()) * kv_heads / args.sms
            longest = int(steps.max())
            lines.append(
                f"| {name} | {n} | {programs} | {longest} | {float(steps.float().mean()):.1f} | {even:.0f} | "
                f"{longest / even:.2f} |"
            )
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "backward_balance.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
