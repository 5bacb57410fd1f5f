"""Launch policy of the attention kernels: `KernelConfig` (warps, stages, TMA, head packing, the
warp-specialised launch), the tile shape patterns are lowered to, and the defaults per layout and device.

Pure Python over a layout's shape and the device's capability: importing it loads no Triton, so the
attention layer can choose tiles before any kernel module is imported.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from sparseattn.kernels.planning.work_list import row_stats
from sparseattn.layout import BlockLayout
from sparseattn.memo import LRU
from sparseattn.patterns import MaskContext, Pattern

LOG2E = 1.4426950408889634
SUPPORTED_BLOCKS = (32, 64, 128)
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128, 256)


@dataclass(frozen=True)
class KernelConfig:
    """Launch knobs: warps per program, software-pipelining depth of the kv loops, and TMA loads.

    ``tma`` loads K/V tiles through tensor descriptors (the TMA copy engine on sm_90+; the interpreter
    emulates them), which needs K and V contiguous: other layouts are copied first. Triton 3.6's warp
    specialisation of the kv loop was measured too and changed nothing on the H200.
    ``pack`` query heads of one kv head share a program (and each K/V tile load) when the layout does
    not depend on the head; the program then computes ``pack * block_m`` rows.
    ``full_runs`` walks a chunk's first two runs of consecutive FULL blocks without index loads, which
    keeps loads out of the K/V address chain so that the pipeliner issues the K/V loads ahead
    (measured faster on the H200 for dense rows; see experiments/results/kernel_notes.md).
    ``max_registers`` caps the registers per thread (PTX ``.maxnreg``): at 128 with 8 warps two programs
    share a multiprocessor's 64K registers, where the compiler would otherwise take up to 255.
    ``q_in_registers`` loads the query block through a tensor descriptor (needs ``tma``) in a form the
    compiler keeps in registers as the first matmul's operand. Otherwise the matmul reads it from shared
    memory for every K tile: on 32-column tiles that re-read weighs as much as the matmul itself, while
    on dense 128 x 128 rows the registers it takes cost more than it saves.
    ``warp_specialized`` runs the same computation as ``gluon_fwd.py``'s kernel, written in Gluon for
    Hopper: a load warp and two compute warpgroups overlapping each tile's softmax with matmuls, which
    Triton cannot express (it brings dense causal to cuDNN's rate on the H200). It takes 128 x 128
    tiles and ``num_warps=4`` (the first compute warpgroup; the kernel adds the others), ``num_stages``
    two K/V stages (with the query block and the output's staging buffer they fill shared memory), TMA,
    one head per program; ``ping_pong`` makes its warpgroups take turns at the
    tensor cores. ``persistent`` launches it as one program per multiprocessor, each taking work items
    by a fixed stride in the list's order: the load warp then brings the next item's query block and
    first tiles while the warpgroups finish this one, which hides a short row's start and end (faster
    for Triangle(), slower for dense causal, whose rows are long). `default_config` takes it for short rows.
    """

    num_warps: int = 8
    num_stages: int = 3
    tma: bool = False
    pack: int = 1
    full_runs: bool = True
    max_registers: int | None = None
    q_in_registers: bool = False
    warp_specialized: bool = False
    ping_pong: bool = False
    persistent: bool = False

    def __post_init__(self) -> None:
        if self.pack not in (1, 2, 4):
            raise ValueError(f"pack: expected 1, 2 or 4 query heads per program, got {self.pack}")
        if self.max_registers is not None and not 24 <= self.max_registers <= 255:
            raise ValueError(
                f"max_registers: expected None or 24 to 255 registers per thread, got {self.max_registers}"
            )
        if self.q_in_registers and not self.tma:
            raise ValueError("q_in_registers: needs tma=True (the query block is loaded through a tensor descriptor)")
        if self.ping_pong and not self.warp_specialized:
            raise ValueError("ping_pong: needs warp_specialized=True")
        if self.persistent and not self.warp_specialized:
            raise ValueError("persistent: needs warp_specialized=True")
        if self.warp_specialized and not (
            self.tma and self.num_warps == 4 and self.num_stages == 2 and self.pack == 1 and self.full_runs
        ):
            raise ValueError(
                f"warp_specialized: expected tma=True, num_warps=4, num_stages=2, pack=1 and full_runs=True, got {self}"
            )
        if self.warp_specialized and (self.max_registers is not None or self.q_in_registers):
            raise ValueError("warp_specialized: sets its own registers and keeps the query block in registers")


# Rows shorter than this many 128 x 128 tiles on average run faster on 64 x 64 tiles with 4 warps:
# the per-program setup (Q load, pipeline fill, epilogue) is then spread over more, smaller programs
# that keep two per multiprocessor (measured for Triangle() and dense causal: experiments/results/kernel_notes.md).
SHORT_ROW_TILES = 16

# Keys from which short rows take 128 x 128 tiles and the persistent warp-specialised launch on Hopper
# (`preferred_block_size`): on device time Triangle() runs faster there than on 32 x 32 tiles from 8K keys
# and slower below (experiments/results/kernel_notes.md).
WARP_SPECIALIZED_SHORT_ROWS_FROM = 8192


def preferred_block_size(
    head_dim: int, dtype: torch.dtype, row_tiles: float | None = None, pack: int = 1, warp_specialized: bool = False
) -> tuple[int, int]:
    """The (block_m, block_n) to lower patterns with for the Triton path.

    128 x 128 tiles fill Hopper's tensor cores and keep the per-tile bookkeeping (index loads, bitmap
    expansion) small against two 128-deep matmuls, for long rows. ``row_tiles``, the mean number of
    128 x 128 tiles per (head, query block) row when known, picks smaller tiles for short-row (sparse)
    layouts: 32 x 32 when query heads of a kv head share each program (``pack``, see `packable_heads`),
    64 x 64 otherwise, unless the warp-specialised launch runs them (``warp_specialized``: Hopper, head
    dim 64 or 128, fp16 or bf16, see `warp_specialized_available`). Persistent, it runs short rows on
    128 x 128 tiles faster than the small tiles do, though it computes more pairs. 256-wide heads would
    spill, so they take 64 x 64; fp32 inputs (interpreter tests) too.
    """
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head_dim: expected one of {SUPPORTED_HEAD_DIMS}, got {head_dim}")
    if head_dim > 128 or dtype == torch.float32:
        return (64, 64)
    if row_tiles is not None and row_tiles < SHORT_ROW_TILES and not warp_specialized:
        return (32, 32) if pack >= 2 else (64, 64)
    return (128, 128)


def warp_specialized_available(head_dim: int, dtype: torch.dtype, device: torch.device | str) -> bool:
    """Whether the warp-specialised launch takes ``head_dim`` and ``dtype`` inputs on ``device`` (for
    a 128 x 128 layout without gathered key columns; `warp_specialized_unsupported` says why not)."""
    return head_dim in (64, 128) and dtype in (torch.float16, torch.bfloat16) and _is_hopper(torch.device(device))


def packable_heads(group: int, head_dim: int, per_head: bool, device: torch.device | str) -> int:
    """Query heads of one kv head that the default launch packs into a program, for GQA groups of
    ``group`` on ``device``: 2 on Hopper (TMA) when the layout is the same for every head and the group
    is even, else 1.

    Packing reads each K/V tile once for the packed heads; it measured slower than none without TMA
    (`default_config`). Four heads per program (``KernelConfig(pack=4)``) measured slower than two once
    the query block stays in registers: their 128 rows then take one 8-warp program per multiprocessor.
    """
    if per_head or head_dim < 64 or not _has_tma(torch.device(device)) or group % 2:
        return 1
    return 2


def default_config(
    layout: BlockLayout, head_dim: int, group: int = 1, dtype: torch.dtype = torch.bfloat16
) -> KernelConfig:
    """Fastest launch knobs measured per tile shape, for query heads in GQA groups of ``group`` (the
    measurements: experiments/results/kernel_notes.md, § Launch defaults).

    Long rows on 128 x 128 tiles gain from TMA loads with a 3-deep pipeline on Hopper, and walk FULL
    tiles run by run.
    Short rows of a head-independent layout pack two query heads of a kv head into one program with TMA
    loads: on 32 x 32 tiles, 4 warps, FULL runs, the query block in registers (faster than the former
    four-head, 8-warp launch). On 64 x 64 tiles two heads with FULL tiles by index (runs at 3 stages need
    128 KiB of shared memory, one program per multiprocessor, and measured slower). Without TMA packing
    measured slower than none, so other devices and per-head layouts keep one head per program with
    pointer loads. On Hopper, 128 x 128 layouts the Gluon kernel takes (`warp_specialized_unsupported`)
    run warp-specialised, with two K/V stages (faster than the Triton launch on dense rows), persistent
    when their rows are short (`short_rows`).
    """
    tma = _has_tma(layout.device)
    if warp_specialized_unsupported(layout, head_dim, dtype) is None:
        return KernelConfig(num_warps=4, num_stages=2, tma=True, warp_specialized=True, persistent=short_rows(layout))
    if layout.block_m >= 128 and head_dim >= 64:
        return KernelConfig(num_warps=8, num_stages=3, tma=True) if tma else KernelConfig(num_warps=8, num_stages=2)
    pack = packable_heads(group, head_dim, layout.num_heads > 1, layout.device)
    if pack == 2 and layout.block_m == 32:
        return KernelConfig(num_warps=4, num_stages=3, tma=True, pack=2, q_in_registers=True)
    if pack == 2:
        return KernelConfig(num_warps=4, num_stages=3, tma=True, pack=2, full_runs=False)
    return KernelConfig(num_warps=4, num_stages=2, full_runs=False)


def warp_specialized_unsupported(
    layout: BlockLayout, head_dim: int, dtype: torch.dtype, *, paged: bool = False
) -> str | None:
    """Why ``KernelConfig(warp_specialized=True)`` cannot run ``layout`` for these inputs, or None
    (``paged``: K/V in a paged cache read through a block table, `paged_sparse_attention`)."""
    if paged:
        return "does not read a paged KV cache: its TMA loads need contiguous K/V (use the pointer-load kernel)"
    if not _is_hopper(layout.device):
        return f"needs a Hopper GPU (sm_90) and Triton's Gluon, got device {layout.device}"
    if layout.block_size != (128, 128):
        return f"needs 128 x 128 tiles, got a layout on {layout.block_size}"
    if head_dim not in (64, 128):
        return f"needs head dim 64 or 128, got {head_dim}"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"needs float16 or bfloat16 inputs, got {dtype}"
    if layout.col_num is not None:
        return "does not take gathered key columns"
    return None


@functools.cache
def _is_hopper(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] == 9


@functools.cache
def _has_tma(device: torch.device) -> bool:
    # Planning for a CUDA device on a machine without one (configs, tests) assumes no TMA.
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 9


def short_rows(layout: BlockLayout) -> bool:
    """Whether ``layout``'s rows hold fewer than ``SHORT_ROW_TILES`` tiles of 128 x 128 on average: read
    back once per layout (one host sync), and False for a ``device_built`` layout, which must not sync.

    The warp-specialised launch runs such layouts persistent, where the load warp brings the next row's
    query block and first tiles while the warpgroups finish a row. Long rows have no start to hide and
    lose the balance of one program per row (measured: experiments/results/kernel_notes.md).
    """
    if layout.device_built:
        return False
    return row_stats(layout).mean * layout.block_m * layout.block_n / (128 * 128) < SHORT_ROW_TILES


_ROW_TILES: LRU[tuple[Pattern, int, int, tuple[int, int]], float | None] = LRU(256)


def mean_row_tiles(pattern: Pattern, q_len: int, kv_len: int, block_size: tuple[int, int]) -> float | None:
    """Upper bound on the mean number of tiles per (head, query block) row, from the pattern's support
    bound alone (no lowering); None when the pattern gives no bound. Memoised like `lowered`: the
    schedule asks for it on every layer call, before its layout cache."""
    if type(pattern).__hash__ is object.__hash__:
        return _mean_row_tiles(pattern, q_len, kv_len, block_size)
    return _ROW_TILES.get(
        (pattern, q_len, kv_len, block_size), lambda: _mean_row_tiles(pattern, q_len, kv_len, block_size)
    )


def _mean_row_tiles(pattern: Pattern, q_len: int, kv_len: int, block_size: tuple[int, int]) -> float | None:
    heads = pattern.num_heads or 1
    ctx = MaskContext(q_len, kv_len, heads, *block_size)
    size = pattern.support_size(ctx)
    return None if size is None else size / (heads * ctx.num_q_blocks)


def default_block_size(
    impl: str,
    head_dim: int,
    dtype: torch.dtype,
    pattern: Pattern | None = None,
    q_len: int = 0,
    kv_len: int = 0,
    *,
    group: int = 1,
    device: torch.device | str = "cpu",
) -> tuple[int, int]:
    """The tile shape a pattern is lowered to for ``impl``; with the pattern and lengths, the Triton path
    picks smaller tiles for short-row (sparse) patterns, smallest when the query heads of a GQA group
    of ``group`` can share each program on ``device``, except from ``WARP_SPECIALIZED_SHORT_ROWS_FROM``
    keys on Hopper, where 128 x 128 tiles on the persistent warp-specialised launch run them faster."""
    native = pattern.native_block_size if pattern is not None else None
    if native is not None:
        # An estimate is defined on its own tiles: whoever did not choose a tile size gets those.
        return native
    if impl == "triton":
        row_tiles = mean_row_tiles(pattern, q_len, kv_len, (128, 128)) if pattern is not None and q_len else None
        per_head = pattern is not None and pattern.num_heads is not None
        pack = packable_heads(group, head_dim, per_head, device)
        warp_specialized = kv_len >= WARP_SPECIALIZED_SHORT_ROWS_FROM and warp_specialized_available(
            head_dim, dtype, device
        )
        return preferred_block_size(head_dim, dtype, row_tiles, pack, warp_specialized)
    return (128, 128) if impl == "flex" else (64, 64)
