"""Resources of the line-sums kernels (`triton_line_sums`) compiled for a GPU architecture, on any machine.

The same offline compile as the attention kernels' (`kernels/attention/resources.py`), with the launch's
specialisation written out: bf16 q and k, fp32 scratch and outputs, every pointer and stride 16-divisible.
"""

from __future__ import annotations

import inspect

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from sparseattn.kernels.attention.resources import KernelResources, compiled_resources
from sparseattn.kernels.estimation.triton_line_sums import (
    BLOCK,
    STATS_BLOCK_N,
    STATS_LAUNCH,
    SUMS_LAUNCH,
    _line_sums_kernel,
    _row_stats_kernel,
)


def _compile(
    kernel: triton.JITFunction, constexprs: dict[str, object], launch: dict, capability: int
) -> KernelResources:
    names = list(inspect.signature(kernel.fn).parameters)
    signature = {}
    for name in names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in ("Q", "K"):
            signature[name] = "*bf16"
        elif name.isupper():
            signature[name] = "*fp32"
        elif name == "qk_scale2":
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    divisible = [i for i, name in enumerate(names) if signature[name].startswith("*") or name.startswith("stride_")]
    source = ASTSource(
        fn=kernel,
        signature=signature,
        constexprs={(names.index(k),): v for k, v in constexprs.items()},
        attrs={(i,): [["tt.divisibility", 16]] for i in divisible},
    )
    return compiled_resources(triton.compile(source, target=GPUTarget("cuda", capability, 32), options=launch))


def line_sums_resources(head_dim: int, *, rows: int = 64, capability: int = 90) -> dict[str, KernelResources]:
    """The two heavy line-sums kernels as `triton_line_sums` launches them for bf16 inputs of ``head_dim``
    and ``rows`` (64: ``last_q`` 64 and a GQA group's rows), compiled for ``capability``."""
    return {
        "_row_stats_kernel": _compile(
            _row_stats_kernel,
            dict(BLOCK_M=rows, BLOCK_N=STATS_BLOCK_N, HEAD_DIM=head_dim, IEEE=False),
            STATS_LAUNCH,
            capability,
        ),
        "_line_sums_kernel": _compile(
            _line_sums_kernel, dict(ROWS=rows, BLOCK=BLOCK, HEAD_DIM=head_dim, IEEE=False), SUMS_LAUNCH, capability
        ),
    }
