"""Triangle() at 32K and 128K through the default launch and persistent variants, alternating, with the
cuDNN time of the same run (the persistent grid's A/B; kernel_options_rejected.md).

    PYTHONPATH=. python experiments/persistent_ab.py '[{}, {"persistent": 3, "max_registers": 168}, {"persistent": 2}]'

Each entry holds `KernelConfig` fields laid over the short-row default (32 x 32, two heads, 4 warps, TMA,
the query block in registers); each is checked against the fp32 reference first.
"""

from __future__ import annotations

import json
import sys

import triton
from kernel_runs import correct, cudnn_ms, inputs

from sparseattn.kernels.triton_fwd import KernelConfig, triton_sparse_attention
from sparseattn.patterns import Triangle


def main() -> None:
    configs = json.loads(sys.argv[1])
    cudnn = {n: cudnn_ms(n) for n in (32768, 131072)}
    for n in (32768, 131072):
        q, k, v = inputs(n)
        layout = Triangle().lower(n, block_size=(32, 32), device="cuda")
        pairs = layout.computed_pairs() * q.shape[1]
        for round_ in range(2):
            for fields in configs:
                config = KernelConfig(4, 3, tma=True, pack=2, q_in_registers=True, **fields)
                err = correct(Triangle(), (32, 32), config)
                ms = triton.testing.do_bench(
                    lambda q=q, k=k, v=v, layout=layout, config=config: triton_sparse_attention(
                        q, k, v, layout, config=config
                    ),
                    return_mode="median",
                )
                print(
                    f"{n} round {round_} {fields} err={err:.1e} {ms:.3f} ms "
                    f"{4 * 128 * pairs / ms / 1e9:.0f} TF/s {cudnn[n] / ms:.2f}x cuDNN",
                    flush=True,
                )


if __name__ == "__main__":
    main()
