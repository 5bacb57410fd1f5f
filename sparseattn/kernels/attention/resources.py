"""Resources of the forward and backward kernels (and of vertical-slash's line sums) compiled for a GPU
architecture, on any machine (no GPU needed).

Triton compiles to a cubin without a device, and the cuobjdump that ships with Triton reads its
resource usage. Shared memory decides how many programs a multiprocessor holds, and with it the
speed of short-row layouts (two programs per multiprocessor hide each other's pipeline fill):
tests check the default configurations against Hopper's limits, and
``experiments/investigations/kernel_resources_offline.py`` tabulates them.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.experimental.gluon._runtime import GluonASTSource
from triton.runtime.jit import mangle_type

from sparseattn.kernels.attention.backward import BackwardConfig, backward_launches
from sparseattn.kernels.attention.config import KernelConfig
from sparseattn.kernels.attention.gluon_fwd import HALF_ROWS, MAX_REGISTERS, _descriptor, _gluon_fwd_kernel
from sparseattn.kernels.attention.triton_fwd import _sparse_fwd_kernel
from sparseattn.kernels.estimation import triton_line_sums as line_sums
from sparseattn.layout import BlockLayout

# Hopper (sm_90): shared memory per multiprocessor, the most one program may take, and 32-bit registers
# per multiprocessor.
HOPPER_SHARED_PER_SM = 228 * 1024
HOPPER_SHARED_PER_PROGRAM = 227 * 1024
HOPPER_REGISTERS_PER_SM = 64 * 1024


@dataclass(frozen=True)
class KernelResources:
    """Per-thread registers and local-memory stack (spills), and shared memory per program, in bytes; and
    how the compiled kernel's matrix products run: ``wgmma_dots`` on Hopper's warp-group MMA, and
    ``mma_sync_dots`` on the warp-level ``mma.sync`` of earlier GPUs, which Triton keeps for a product
    whose M is below one warp group's 64 rows (about half the throughput). Counted in the TritonGPU IR,
    after unrolling: products in the source, not executions."""

    registers: int
    stack_bytes: int
    shared_bytes: int
    wgmma_dots: int
    mma_sync_dots: int

    def programs_per_sm(self, shared_per_sm: int = HOPPER_SHARED_PER_SM) -> int:
        """Programs one multiprocessor holds by shared memory alone."""
        return shared_per_sm // max(self.shared_bytes, 1)


def _signature(head_dim: int, constexprs: dict[str, object]) -> dict[str, str]:
    """Triton type strings for the kernel's parameters: bf16 q/k/v/out, fp32 lse and scratch, int32
    lists and sizes, tensor descriptors of one K/V tile (``USE_TMA``) and one query box
    (``Q_IN_REGISTERS``)."""
    types = {}
    for name in inspect.signature(_sparse_fwd_kernel.fn).parameters:
        if name in constexprs:
            types[name] = "constexpr"
        elif name in ("Q", "K", "V", "Out"):
            types[name] = "*bf16"
        elif name == "Q_DESC":
            pack = constexprs["PACK"]
            q_desc = constexprs["Q_IN_REGISTERS"]
            types[name] = f"tensordesc<bf16[1, {pack}, {constexprs['BLOCK_M']}, {head_dim}]>" if q_desc else "*bf16"
        elif name in ("K_DESC", "V_DESC"):
            block_n = constexprs["BLOCK_N"]
            types[name] = f"tensordesc<bf16[{block_n}, {head_dim}]>" if constexprs["USE_TMA"] else "*bf16"
        elif name in ("LSE", "O_PART", "LSE_PART"):
            types[name] = "*fp32"
        elif name == "qk_scale":
            types[name] = "fp32"
        elif name.isupper():  # the other pointers: work list, tile lists, bitmaps, columns
            types[name] = "*i32"
        else:
            types[name] = "i32"
    return types


def kernel_resources(
    block_size: tuple[int, int], head_dim: int, config: KernelConfig, *, capability: int = 90
) -> KernelResources:
    """Compile the kernel for ``block_size`` tiles, ``head_dim`` and ``config`` (bf16, even kv length,
    no gathered columns) for compute capability ``capability``, and read its resources."""
    block_m, block_n = block_size
    constexprs: dict[str, object] = dict(
        BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=head_dim, EVEN_KV=True, HAS_COLS=False,
        NUM_STAGES=config.num_stages, USE_TMA=config.tma, PACK=config.pack, FULL_RUNS=config.full_runs,
        Q_IN_REGISTERS=config.q_in_registers,
        # Contiguous K/V, as every launch but `paged_sparse_attention`'s: the paged arguments stay unread.
        BLOCK_TABLE=None, PAGE_SIZE=0, PAGED=False,
    )  # fmt: skip
    names = list(inspect.signature(_sparse_fwd_kernel.fn).parameters)
    signature = _signature(head_dim, constexprs)
    # What a launch on contiguous q, k, v marks as 16-divisible (`_launch_specialisation`): every pointer,
    # every stride of those tensors and of the work list, and kv_len when it is a whole number of tiles.
    divisible = [
        i
        for i, name in enumerate(names)
        if signature[name].startswith("*") or name.startswith("stride_") or (name == "kv_len" and block_n % 16 == 0)
    ]
    source = ASTSource(
        fn=_sparse_fwd_kernel,
        signature=signature,
        constexprs={(names.index(k),): v for k, v in constexprs.items()},
        attrs={(i,): [["tt.divisibility", 16]] for i in divisible},
    )
    options: dict[str, object] = {"num_warps": config.num_warps}
    if config.max_registers:
        options["maxnreg"] = config.max_registers
    return compiled_resources(triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options))


def warp_specialized_resources(
    head_dim: int, config: KernelConfig, *, even_kv: bool = True, capability: int = 90
) -> KernelResources:
    """Compile ``gluon_fwd``'s kernel (bf16, 128 x 128 tiles, ``config``'s stages and ping-pong, kv_len a
    multiple of 128 or not) for compute capability ``capability`` and read its resources: the registers are the cap the kernel
    runs under, which setmaxnreg then splits between its partitions."""
    # Only shapes and dtypes make the signature: queries as rows, K and V as [B * Hkv, kv_len, D].
    rows, heads = torch.empty(128, head_dim, dtype=torch.bfloat16), torch.empty(1, 128, head_dim, dtype=torch.bfloat16)
    descriptors = {
        "q_desc": _descriptor(rows, [HALF_ROWS, head_dim]),
        "k_desc": _descriptor(heads, [1, 128, head_dim]),
        "v_desc": _descriptor(heads, [1, 128, head_dim]),
        "o_desc": _descriptor(torch.empty(1, 1, 128, head_dim, dtype=torch.bfloat16), [1, 1, HALF_ROWS, head_dim]),
    }
    constexprs = {"STAGES": config.num_stages, "PING_PONG": config.ping_pong, "EVEN_KV": even_kv}
    signature = {}
    for name in inspect.signature(_gluon_fwd_kernel.fn).parameters:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in descriptors:
            signature[name] = mangle_type(descriptors[name])
        elif name == "Out":
            signature[name] = "*bf16"
        elif name in ("LSE", "O_PART", "LSE_PART"):
            signature[name] = "*fp32"
        elif name == "qk_scale":
            signature[name] = "fp32"
        elif name.isupper():  # work list, tile lists, bitmaps
            signature[name] = "*i32"
        else:
            signature[name] = "i32"
    source = GluonASTSource(_gluon_fwd_kernel, signature, constexprs=constexprs)
    options = {"num_warps": 4, "maxnreg": MAX_REGISTERS}
    return compiled_resources(triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options))


def compiled_resources(compiled: triton.compiler.CompiledKernel) -> KernelResources:
    """Registers and stack from the cubin (the cuobjdump that ships with Triton), shared memory from
    the compiler's metadata."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run(
            [os.fspath(tool), "-res-usage", os.fspath(cubin)], check=True, capture_output=True, text=True
        )
    found = re.search(r"REG:(\d+)\s+STACK:(\d+)", usage.stdout)
    if found is None:
        raise RuntimeError(f"cuobjdump gave no resource line: {usage.stdout}")
    wgmma, mma_sync = dot_kinds(compiled.asm["ttgir"])
    return KernelResources(int(found[1]), int(found[2]), int(compiled.metadata.shared), wgmma, mma_sync)


def dot_kinds(ttgir: str) -> tuple[int, int]:
    """(warp-group products, mma.sync products) of a TritonGPU module: the first are its
    ``ttng.warp_group_dot`` ops, the second the ``tt.dot`` ops left with an ``nvidia_mma`` result
    encoding of version 2."""
    versions = dict(re.findall(r"^#(\w+) = #ttg\.nvidia_mma<\{versionMajor = (\d+)", ttgir, re.MULTILINE))
    wgmma = len(re.findall(r"= ttng\.warp_group_dot ", ttgir))
    results = re.findall(r"= tt\.dot .*-> tensor<[^,>]*, #(\w+)>", ttgir)
    return wgmma, sum(versions.get(alias) == "2" for alias in results)


def backward_resources(
    layout: BlockLayout,
    head_dim: int,
    config: BackwardConfig,
    *,
    heads: int = 4,
    kv_heads: int = 2,
    capability: int = 90,
) -> dict[str, KernelResources]:
    """Compile every kernel the backward launches for ``layout`` (bf16 inputs of ``heads`` query and
    ``kv_heads`` kv heads at the layout's lengths, ``config``) for compute capability ``capability``, and
    read each one's resources: the launches are planned on the CPU exactly as on the GPU
    (`backward_launches`), so a configuration that would not compile fails here first."""
    q_len, kv_len = layout.q_len, layout.kv_len
    q = torch.zeros(1, heads, q_len, head_dim, dtype=torch.bfloat16)
    k = torch.zeros(1, kv_heads, kv_len, head_dim, dtype=torch.bfloat16)
    lse = torch.zeros(1, heads, q_len)
    plan = backward_launches(q, q, k, k, q, lse, layout.to("cpu"), config=config)
    found = {}
    for launch in plan.launches:
        names = list(inspect.signature(launch.kernel.fn).parameters)
        constexprs = {k: v for k, v in launch.options.items() if k in names}
        signature, attrs = _launch_specialisation(names, launch.args, constexprs)
        source = ASTSource(
            fn=launch.kernel,
            signature=signature,
            constexprs={(names.index(k),): v for k, v in constexprs.items()},
            attrs=attrs,
        )
        options = {k: v for k, v in launch.options.items() if k not in names}
        compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)
        found[launch.kernel.fn.__name__] = compiled_resources(compiled)
    return found


def _launch_specialisation(
    names: list[str], args: tuple, constexprs: dict[str, object]
) -> tuple[dict[str, str], dict[tuple[int], list]]:
    """Signature and attributes as Triton's launcher specialises ``args``: an int equal to 1 becomes a
    constant (added to ``constexprs``), and pointers and ints divisible by 16 are marked so. Without the
    marks an offline compile cannot prove 16-byte rows, so it keeps the q and dO loads of the dK/dV loop
    synchronous where a GPU launch makes them asynchronous copies into shared memory: its shared memory
    and registers then describe a kernel that never runs (145 KiB offline against 257 KiB on an H100 for
    key-major dK/dV before this)."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    signature: dict[str, str] = dict.fromkeys(constexprs, "constexpr")
    attrs: dict[tuple[int], list] = {}
    for index, (name, value) in enumerate(zip(names, args, strict=False)):
        if name in constexprs:
            continue
        kind, key = native_specialize_impl(BaseBackend, value, False, True, True)
        if kind == "constexpr":
            constexprs[name] = key
            signature[name] = "constexpr"
            continue
        signature[name] = kind
        if isinstance(key, str) and key:
            attrs[(index,)] = BaseBackend.parse_attr(key)
    return signature, attrs


def _compile_line_sums(
    kernel: triton.JITFunction, constexprs: dict[str, object], launch: dict, capability: int
) -> KernelResources:
    """A line-sums kernel with the specialisation its launch gets written out: bf16 q and k, fp32 scratch
    and outputs, every pointer and stride 16-divisible."""
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
        "_row_stats_kernel": _compile_line_sums(
            line_sums._row_stats_kernel,
            dict(BLOCK_M=rows, BLOCK_N=line_sums.STATS_BLOCK_N, HEAD_DIM=head_dim, IEEE=False),
            line_sums.STATS_LAUNCH,
            capability,
        ),
        "_line_sums_kernel": _compile_line_sums(
            line_sums._line_sums_kernel,
            dict(ROWS=rows, BLOCK=line_sums.BLOCK, HEAD_DIM=head_dim, IEEE=False),
            line_sums.SUMS_LAUNCH,
            capability,
        ),
    }
