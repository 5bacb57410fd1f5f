"""One kernel call per pattern, for a profiler to capture (Nsight Compute replays the launch it picks).

    ncu --kernel-name regex:_sparse_fwd_kernel --launch-skip 1 --launch-count 1 --section SpeedOfLight \
        PYTHONPATH=experiments python experiments/investigations/profile_kernel.py triangle 32768

The first call compiles and plans the work list (skipped by ``--launch-skip 1``); the second is the one
profiled. Same shape and default launch as ``bench_kernel.py``.
"""

from __future__ import annotations

import argparse

import torch
from harness import default_layout, inputs

from sparseattn.kernels.attention.launch import triton_sparse_attention
from sparseattn.patterns import Causal, Pattern, Triangle

PATTERNS: dict[str, Pattern] = {"causal": Causal(), "triangle": Triangle()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pattern", choices=sorted(PATTERNS))
    parser.add_argument("tokens", type=int)
    args = parser.parse_args()
    pattern = PATTERNS[args.pattern]
    q, k, v = inputs(args.tokens)
    layout = default_layout(pattern, args.tokens)
    for _ in range(2):
        triton_sparse_attention(q, k, v, layout)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
