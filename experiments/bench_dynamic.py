"""Dynamic patterns on the GPU at 128K: estimation + lowering overhead against the attention they drive.

One run: correctness checks first (fast estimator == slow reference, Triton/Flex on the estimated layout ==
oracle, no host synchronisation from estimate to attention output), then timings (``triton.testing.do_bench`` medians):
estimate + lower, the shared Triton kernel on the layout, FlexAttention compiled on the identical layout
(Flex as written, on the pattern's own ``to_mask_mod()``, is "n/a (layout path)": an estimated pattern has no
analytic predicate), and dense cuDNN SDPA. MInference's vertical-slash kernel runs where ``.peers/`` is staged
(``experiments/stage_peers.sh``): checked against ours on the identical mask (``form="minference"``), then
timed beside it; its CUDA index builder is not built here, so its arrays come from
``experiments/minference_indexes.py`` (timed apart). Writes ``dynamic_bench.json`` and ``.md`` to
``--out`` (default: a fresh folder, outputs/bench_dynamic/<time>; ``--out experiments/results`` updates the
committed results).

Inputs are synthetic but structured like a long-context LLM (`harness.structured_qkv`; random q/k alone
give near-uniform attention, hence a near-dense vertical-slash estimate): keys and queries share one
direction per kv head, rotated by position like RoPE, so scores depend on relative position (slashes),
plus a few heavy sink keys (verticals). The benchmark's body is `harness.measure_dynamic`, which
``bench_kernel.py`` also runs.

    python experiments/bench_dynamic.py --out experiments/results
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

from harness import measure_dynamic

from sparseattn.eval.provenance import portable


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--length", type=int, default=131072)
    stamp = f"{datetime.datetime.now():%Y-%m-%d_%H-%M-%S}"
    # A fresh folder by default; --out experiments/results (or $OUT) updates committed results explicitly.
    parser.add_argument("--out", default=f"outputs/bench_dynamic/{stamp}")
    parser.add_argument("--skip-flex", action="store_true")
    args = parser.parse_args()
    command = portable(" ".join(["python", "experiments/bench_dynamic.py", *sys.argv[1:]]))
    measure_dynamic(args.length, Path(os.environ.get("OUT") or args.out), skip_flex=args.skip_flex, command=command)


if __name__ == "__main__":
    main()
