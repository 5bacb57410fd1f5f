"""Lowering specifics: deduplicated bitmaps, gathered columns, broadcasting, scale, bad input."""

import pytest
import torch

from sparseattn import BlockLayout
from sparseattn.lowering import lower
from sparseattn.patterns import Causal, Columns, Diagonals, PerHead, Streaming, Triangle, Window
from sparseattn.testing import check_layout_invariants, check_lowering


def test_causal_diagonal_tiles_share_one_bitmap():
    layout = check_lowering(Causal(), 1024, 1024, (64, 64))
    full, partial = layout.num_tiles()
    assert partial == 16 and full == 16 * 15 // 2
    assert layout.tile_masks.shape[0] == 1


def test_triangle_structure():
    # 64-wide tiles, window 512 = 8 tiles: per row a diagonal tile, a window edge, a sink tile.
    layout = check_lowering(Triangle(), 4096, 4096, (64, 64))
    assert layout.tile_masks.shape[0] <= 4
    rows = layout.full_kv_num_blocks[0, 0] + layout.kv_num_blocks[0, 0]
    assert int(rows[-1]) == 64 and int(rows[-2]) == 63  # the last 128 rows see every earlier tile
    assert int(rows[20]) == 10  # sink + 8 window tiles + window edge


def test_head_independent_patterns_broadcast_and_per_head_do_not():
    assert lower(Triangle(), 256).num_heads == 1
    mixed = PerHead((Causal(), Triangle(window=64), Streaming(4, 32)))
    layout = check_lowering(mixed, 256, 256, (64, 64))
    assert layout.num_heads == 3


def test_vertical_lines_are_gathered_not_tiled():
    columns = tuple(range(3, 1000, 37))
    pattern = Causal() & (Columns(columns) | Window(64))
    layout = check_lowering(pattern, 1024, 1024, (64, 64))
    assert layout.has_columns
    full, partial = layout.num_tiles()
    assert full + partial <= 2 * 16  # only the window's tiles are computed
    gathered = int(layout.col_num.sum())
    assert gathered > 0
    # Nothing is counted twice: a gathered column never falls in a computed tile of its row.
    b, h, qb, slot = layout.column_entries()
    blocks = layout.col_indices[slot].long() // 64
    grid, _ = layout._tile_grid()
    assert not bool(grid[b, h, qb, blocks].any())


def test_columns_can_stay_tiled():
    pattern = Causal() & (Columns((5, 70)) | Diagonals((0, 3)))
    from sparseattn.lowering import lower

    layout = lower(pattern, 200, 300, block_size=(32, 64), gather_columns=False)
    check_layout_invariants(layout)
    assert not layout.has_columns
    assert torch.equal(layout.to_dense()[0, 0], pattern.to_dense(200, 300)[0])


def test_one_million_tokens_stay_proportional_to_tiles():
    layout = lower(Triangle(), 1 << 20, block_size=(64, 64))
    full, partial = layout.num_tiles()
    nbytes = layout.nbytes
    rows = layout.num_q_blocks
    # CSR: 4 bytes per FULL tile, 8 per PARTIAL tile, 24 per row, a few distinct bitmaps.
    assert nbytes <= 4 * full + 8 * partial + 24 * rows + layout.tile_masks.numel() * 4
    assert layout.tile_masks.shape[0] <= 4


def test_from_dense_round_trips():
    torch.manual_seed(0)
    mask = torch.rand(2, 3, 70, 100) < 0.2
    layout = BlockLayout.from_dense(mask, (32, 32))
    check_layout_invariants(layout)
    assert torch.equal(layout.to_dense(), mask)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(q_len=10, kv_len=5), "q_len <= kv_len"),
        (dict(q_len=0), "q_len"),
        (dict(q_len=10, block_size=(64, 48)), "block_size"),
        (dict(q_len=10, block_size=(0, 64)), "block_size"),
    ],
)
def test_bad_lowering_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        lower(Causal(), **kwargs)


def test_summary_and_repr_describe_the_layout():
    layout = lower(Triangle(), 8192)
    text = layout.summary()
    assert "q_len=8192" in text and "distinct bitmaps" in text and "MiB" in text
    assert repr(layout).startswith("BlockLayout(q_len=8192")
    assert 0 < layout.density() < 0.2
