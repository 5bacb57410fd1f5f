"""MInference's merged slash windows per (head, row block), walked on the GPU by one program per head and
``BLOCK_G`` row blocks.

Same contract as the torch oracle `torch_minference_runs`, which takes one step of a few dozen small
device operations per slash (MInference's configs keep up to 6096 slashes per head). The walk is sequential in
the slashes (largest diagonal first, so window ends ascend) but independent across row blocks, so a
program keeps the open run of each of its row blocks in registers and walks its head's slashes once,
``UNROLL`` loads in flight at a time; a run is written to its row block's next slot when the next
window starts more than one block past its end.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK_G = 128  # row blocks per program
UNROLL = 8  # slash loads issued before the first of them is used


@triton.jit
def _minference_runs_kernel(
    SLASH, STARTS, ENDS, LAST_END,
    stride_sh, stride_rh, stride_rg, stride_lh,
    count, num_g, first,
    PAD_VALUE: tl.constexpr, B: tl.constexpr, BLOCK_G: tl.constexpr, UNROLL: tl.constexpr,
):  # fmt: skip
    h = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1).to(tl.int64) * BLOCK_G + tl.arange(0, BLOCK_G)  # [BLOCK_G] row block - first
    in_g = g < num_g
    end_m = (g + first + 1) * B  # [BLOCK_G] one past the row block's last query
    cur_start = tl.zeros([BLOCK_G], tl.int64)
    cur_end = tl.zeros([BLOCK_G], tl.int64)
    active = tl.zeros([BLOCK_G], tl.int32)  # 1: a run is open
    runs = tl.zeros([BLOCK_G], tl.int64)  # runs written so far: the next free slot
    slots = STARTS + h * stride_rh + g * stride_rg  # [BLOCK_G] pointers to each row block's slot 0
    run_ends = ENDS + h * stride_rh + g * stride_rg
    for j0 in range(0, count, UNROLL):
        for u in tl.static_range(UNROLL):
            i = count - 1 - (j0 + u)  # slashes from the largest diagonal down
            d = tl.load(SLASH + h * stride_sh + i, mask=i >= 0, other=PAD_VALUE)  # past the list: a no-op
            valid = ((d != PAD_VALUE) & (d < end_m)).to(tl.int32)  # [BLOCK_G]
            e = tl.maximum(end_m - d, B)  # [BLOCK_G] the window [e - B, e) ends at the slash's crossing
            opens = valid * tl.maximum(1 - active, (e > cur_end + B).to(tl.int32))
            extends = valid * active * (1 - opens) * (e > cur_end).to(tl.int32)
            close = opens * active
            tl.store(slots + runs, cur_start, mask=in_g & (close != 0))
            tl.store(run_ends + runs, cur_end, mask=in_g & (close != 0))
            runs += close
            cur_start = tl.where(opens != 0, e - B, cur_start)
            cur_end = tl.where(opens != 0, e, tl.where(extends != 0, cur_end + B, cur_end))
            active = tl.maximum(active, opens)
    tl.store(slots + runs, cur_start, mask=in_g & (active != 0))
    tl.store(run_ends + runs, cur_end, mask=in_g & (active != 0))
    tl.store(LAST_END + h * stride_lh + g, tl.where(active != 0, cur_end, 0), mask=in_g)


def triton_minference_runs(
    slash: Tensor, block: int, num_row_blocks: int, first: int = 0, *, pad: int
) -> tuple[Tensor, Tensor, Tensor]:
    """`VerticalSlashIndices.minference_runs` of the slash diagonals ``slash`` (int64 ``[H, count]``,
    ascending, ``pad`` after a head's last: the estimation layer's index padding, which also pads the
    returned runs) on row blocks of ``block`` queries, ``first`` to ``num_row_blocks``: ``(starts, ends,
    last_end)`` as there, on ``slash``'s device, no host sync."""
    if slash.dtype != torch.int64 or slash.dim() != 2:
        raise ValueError(f"slash: expected an int64 [H, count] tensor, got {slash.dtype} {tuple(slash.shape)}")
    heads, count = slash.shape
    num_g = max(0, num_row_blocks - first)
    slots = max(1, min(count, num_row_blocks + 1))
    starts = torch.full((heads, num_g, slots), pad, dtype=torch.long, device=slash.device)
    ends = starts.clone()
    last_end = torch.zeros(heads, num_g, dtype=torch.long, device=slash.device)
    if heads and num_g:
        slash = slash.contiguous()
        _minference_runs_kernel[(heads, triton.cdiv(num_g, BLOCK_G))](
            slash, starts, ends, last_end,
            slash.stride(0), starts.stride(0), starts.stride(1), last_end.stride(0),
            count, num_g, first,
            PAD_VALUE=pad, B=block, BLOCK_G=BLOCK_G, UNROLL=UNROLL,
        )  # fmt: skip
    return starts, ends, last_end
