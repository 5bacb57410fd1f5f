"""MInference's vertical-slash index arrays, built from this project's reading of MInference's rules.

MInference's vertical-slash Triton kernel (``_triton_mixed_sparse_attention`` in its
``minference/ops/pit_sparse_flash_attention_v2.py``) walks four arrays per (head, 64-row block): the
starts of 64-key blocks to compute causally, and the key columns to gather. Its index builder
(``csrc/vertical_slash_index.cu``) is CUDA C++ that pip cannot build here, so the benchmarks would
report the authors' kernel as absent. `convert_vertical_slash_indexes` takes the builder's arguments and
returns its arrays from `VerticalSlashIndices(form="minference").minference_runs` instead: a merged
run ``[start, end)`` (a whole number of 64-key windows) becomes the blocks ``start, start + 64, ...``;
a vertical is gathered where no run of the row block holds it and it lies below the block's last run
end. ``experiments/stage_peers.sh`` writes a ``minference/cuda.py`` into ``.peers/`` that imports this
function, so MInference's module imports unchanged; the benchmarks say which builder was used.
``tests/test_minference_indexes.py`` holds the mask these arrays describe equal to the form's own mask.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparseattn.estimation.topk import PAD
from sparseattn.estimation.vs_indices import VerticalSlashIndices

BLOCK = 64  # the only tile MInference's builder and kernel accept


def convert_vertical_slash_indexes(
    seqlens: Tensor,
    vertical_indexes: Tensor,
    slash_indexes: Tensor,
    context_size: int,
    block_size_M: int,  # MInference's argument names, so its module calls this unchanged
    block_size_N: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(block_count [1, H, G], block_offset [1, H, G, NNZ_S], column_count [1, H, G], column_index
    [1, H, G, NNZ_V])``, int32, ``G = ceil(context_size / 64)``, for one sequence.

    ``vertical_indexes [1, H, NNZ_V]`` are key columns, ``slash_indexes [1, H, NNZ_S]`` diagonals
    ``d = q - k`` (any order; MInference passes them ascending and descending). Entries past a row's
    count are zero, never read by the kernel.
    """
    if block_size_M != BLOCK or block_size_N != BLOCK:
        raise ValueError(
            f"block_size_M, block_size_N: MInference's kernel takes 64 x 64 blocks, got {block_size_M} x {block_size_N}"
        )
    if vertical_indexes.shape[0] != 1 or seqlens.numel() != 1 or int(seqlens[0]) != context_size:
        raise ValueError(
            f"seqlens: expected one sequence of context_size={context_size} tokens, got {seqlens.tolist()}"
        )
    vertical = vertical_indexes[0].long().sort(-1).values
    slash = slash_indexes[0].long().sort(-1).values
    lines = VerticalSlashIndices(vertical, slash, form="minference", block_size=BLOCK)
    rows = -(-context_size // BLOCK)
    starts, ends, last_end = lines.minference_runs(rows)  # [H, G, S], [H, G, S], [H, G]
    block_offset, block_count = _run_blocks(starts, ends, slash.shape[1])
    column_index, column_count = _gathered(vertical, starts, ends, last_end)
    return block_count[None], block_offset[None], column_count[None], column_index[None]


def _run_blocks(starts: Tensor, ends: Tensor, slots: int) -> tuple[Tensor, Tensor]:
    """Each row block's runs cut into 64-key block starts, in key order: ``[H, G, slots]`` and counts."""
    real = starts != PAD
    per_run = torch.where(real, (ends - starts) // BLOCK, 0)  # [H, G, S]
    after = per_run.cumsum(-1)  # blocks up to and including each run
    count = after[..., -1]
    j = torch.arange(slots, device=starts.device)
    run = torch.searchsorted(after, j.expand(*after.shape[:-1], slots).contiguous(), right=True)
    run = run.clamp(max=starts.shape[-1] - 1)
    before = after.gather(-1, run) - per_run.gather(-1, run)
    offset = starts.gather(-1, run) + (j - before) * BLOCK
    return torch.where(j < count.unsqueeze(-1), offset, 0).int(), count.int()


def _gathered(vertical: Tensor, starts: Tensor, ends: Tensor, last_end: Tensor) -> tuple[Tensor, Tensor]:
    """Verticals outside every run of the row block and below its last run end, ascending: ``[H, G, V]``."""
    heads, rows, _ = starts.shape
    cols = vertical.unsqueeze(1).expand(heads, rows, -1).contiguous()  # [H, G, V]
    slot = torch.searchsorted(starts, cols, right=True) - 1  # the run starting at or before each column
    inside = (slot >= 0) & (cols < ends.gather(-1, slot.clamp(min=0)))
    keep = ~inside & (cols < last_end.unsqueeze(-1)) & (cols != PAD)
    # Kept columns first, in key order: a stable sort on "dropped" keeps the ascending columns in place.
    order = torch.sort((~keep).int(), dim=-1, stable=True).indices
    count = keep.sum(-1)
    index = torch.where(
        torch.arange(cols.shape[-1], device=cols.device) < count.unsqueeze(-1), cols.gather(-1, order), 0
    )
    return index.int(), count.int()
