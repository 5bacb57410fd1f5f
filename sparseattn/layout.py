"""`BlockLayout`: the lowered form of every pattern, consumed by every backend.

A layout cuts the (query, key) plane into tiles of ``block_m`` query rows by ``block_n`` key columns.
For each (batch, head, query block) it lists, in ascending order, the key blocks to compute without
any mask (FULL) and the key blocks to compute through a bitmap (PARTIAL). Optionally it also lists key
columns to gather one by one (vertical lines that no computed tile covers); gathered columns are kept
only where ``k <= q_pos`` (causal), the only way they are ever produced.

Field names follow FlexAttention's ``BlockMask``. Leading batch and head dimensions are 1 when the
layout does not depend on them and broadcast. Partial-tile bitmaps are deduplicated: ``tile_masks``
holds one packed bitmap per distinct partial tile and ``kv_mask_ids`` points each partial tile at its
bitmap (every causal diagonal tile of a layout shares one).

Storage is compressed sparse rows, not FlexAttention's padding: each list lives in one flat tensor
and ``*_start`` gives each row's offset into it. Padding every row to the longest one costs
O(rows x longest row), and a triangle's last rows are as long as the prompt (1 GiB of indices for
``Triangle()`` at 1M tokens, against 2.5 MiB here).

Bit packing: ``tile_masks[t, i, w]`` is an int32 word whose bit ``b`` is the mask of row ``i`` and
column ``32 * w + b`` of the tile. Bits outside the sequence (tail tiles) are zero.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from sparseattn.memo import shared_cache
from sparseattn.patterns.tiles import FULL, PARTIAL

_WORD = 32


def block_shape(block_size: object) -> tuple[int, int]:
    """``block_size`` as ``(block_m, block_n)``: an int means a square tile."""
    if isinstance(block_size, int) and not isinstance(block_size, bool):
        return (block_size, block_size)
    if (
        isinstance(block_size, (tuple, list))
        and len(block_size) == 2
        and all(isinstance(b, int) and not isinstance(b, bool) for b in block_size)
    ):
        return (int(block_size[0]), int(block_size[1]))
    raise ValueError(f"block_size: expected an int (square tiles) or a pair (block_m, block_n), got {block_size!r}")


def pack_bits(bits: Tensor) -> Tensor:
    """[T, M, N] bool -> [T, M, N // 32] int32, bit b of word w is column 32 * w + b."""
    t, m, n = bits.shape
    return (bits.reshape(t, m, n // _WORD, _WORD) * _bit_weights(bits.device)).sum(-1).to(torch.int32)


@shared_cache(maxsize=8)
def _bit_weights(device: torch.device) -> Tensor:
    """Bit 31 weighs -2**31, so each word's sum already is its two's-complement int32 value."""
    return torch.tensor([1 << b for b in range(_WORD - 1)] + [-(1 << 31)], dtype=torch.int64, device=device)


def unpack_bits(words: Tensor, block_n: int) -> Tensor:
    """[T, M, N // 32] int32 -> [T, M, N] bool (inverse of the packing described in the module)."""
    shifts = torch.arange(_WORD, dtype=torch.int64, device=words.device)
    bits = (words.to(torch.int64).unsqueeze(-1) >> shifts) & 1
    return bits.reshape(*words.shape[:-1], block_n).bool()


_TENSOR_FIELDS = (
    "full_kv_num_blocks",
    "full_kv_start",
    "full_kv_indices",
    "kv_num_blocks",
    "kv_start",
    "kv_indices",
    "kv_mask_ids",
    "tile_masks",
    "col_num",
    "col_start",
    "col_indices",
)


@dataclass(frozen=True, eq=False)
class BlockLayout:
    """Block-sparse description of one attention mask; see the module docstring for the format.

    Shapes (``B`` and ``H`` are 1 where the layout broadcasts, ``QB = ceil(q_len / block_m)``):

    - ``full_kv_num_blocks`` [B, H, QB] int32: FULL tiles per row; ``full_kv_start`` [B, H, QB] int64:
      offset of the row in ``full_kv_indices`` [nnz_full] int32 (ascending kv-block ids per row)
    - ``kv_num_blocks``, ``kv_start``, ``kv_indices`` [nnz_partial]: the same for PARTIAL tiles, and
      ``kv_mask_ids`` [nnz_partial] int32: row of ``tile_masks`` for each partial tile
    - ``tile_masks`` [T, block_m, block_n // 32] int32 packed bitmaps
    - ``col_num``, ``col_start``, ``col_indices`` [nnz_cols] int32 (ascending key positions per row):
      gathered columns, all three ``None`` when nothing is gathered.
    - ``device_built``: the layout was built on the device without host synchronisation (a dynamic
      estimate, once per layer and prompt). The Triton kernel then plans it without reading its counts
      back: heaviest rows first, no row splitting (deciding on splits needs the counts on the host, a
      sync and milliseconds of small ops per layout at 128K).

    Rows may share storage: heads that use the same pattern point their ``*_start`` at the same
    slice (see `select_heads`), so a per-head layout costs the distinct patterns' tiles, not H times.
    """

    q_len: int
    kv_len: int
    block_m: int
    block_n: int
    full_kv_num_blocks: Tensor
    full_kv_start: Tensor
    full_kv_indices: Tensor
    kv_num_blocks: Tensor
    kv_start: Tensor
    kv_indices: Tensor
    kv_mask_ids: Tensor
    tile_masks: Tensor
    col_num: Tensor | None = None
    col_start: Tensor | None = None
    col_indices: Tensor | None = None
    device_built: bool = False

    def __post_init__(self) -> None:
        if self.block_m <= 0 or self.block_n <= 0 or self.block_n % _WORD:
            raise ValueError(
                f"block_size: expected block_m > 0 and block_n a positive multiple of {_WORD}, "
                f"got ({self.block_m}, {self.block_n})"
            )
        if not 0 < self.q_len <= self.kv_len:
            raise ValueError(f"lengths: expected 0 < q_len <= kv_len, got q_len={self.q_len}, kv_len={self.kv_len}")
        lead = self.full_kv_num_blocks.shape
        if len(lead) != 3 or lead[2] != self.num_q_blocks:
            raise ValueError(f"full_kv_num_blocks: expected shape [B, H, {self.num_q_blocks}], got {tuple(lead)}")
        for name in ("full_kv_start", "kv_num_blocks", "kv_start", "col_num", "col_start"):
            value = getattr(self, name)
            if value is not None and value.shape != lead:
                raise ValueError(f"{name}: expected shape {tuple(lead)}, got {tuple(value.shape)}")
        for name in ("full_kv_indices", "kv_indices", "kv_mask_ids", "col_indices"):
            value = getattr(self, name)
            if value is not None and value.dim() != 1:
                raise ValueError(
                    f"{name}: expected a flat tensor (rows found through *_start), got {tuple(value.shape)}"
                )
        if self.kv_mask_ids.shape != self.kv_indices.shape:
            raise ValueError("kv_mask_ids: expected the shape of kv_indices")
        if self.tile_masks.dim() != 3 or self.tile_masks.shape[1:] != (self.block_m, self.block_n // _WORD):
            raise ValueError(
                f"tile_masks: expected shape [T, {self.block_m}, {self.block_n // _WORD}], got {tuple(self.tile_masks.shape)}"
            )
        if len({self.col_num is None, self.col_start is None, self.col_indices is None}) != 1:
            raise ValueError("col_num, col_start and col_indices: give all three or none")

    # ------------------------------------------------------------------ shape facts
    @property
    def block_size(self) -> tuple[int, int]:
        return (self.block_m, self.block_n)

    @property
    def num_q_blocks(self) -> int:
        return -(-self.q_len // self.block_m)

    @property
    def num_kv_blocks(self) -> int:
        return -(-self.kv_len // self.block_n)

    @property
    def batch_size(self) -> int:
        """1 when the layout broadcasts over batch."""
        return int(self.full_kv_num_blocks.shape[0])

    @property
    def num_heads(self) -> int:
        """1 when the layout broadcasts over heads."""
        return int(self.full_kv_num_blocks.shape[1])

    @property
    def device(self) -> torch.device:
        return self.full_kv_num_blocks.device

    @property
    def has_columns(self) -> bool:
        return self.col_num is not None

    def to(self, device: torch.device | str) -> BlockLayout:
        moved: dict[str, Any] = {}
        for name in _TENSOR_FIELDS:
            value = getattr(self, name)
            moved[name] = None if value is None else value.to(device)
        return replace(self, **moved)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_tiles(
        cls,
        *,
        q_len: int,
        kv_len: int,
        block_size: int | tuple[int, int],
        lead_shape: tuple[int, int],
        batch: Tensor,
        head: Tensor,
        q_block: Tensor,
        kv_block: Tensor,
        is_full: Tensor,
        mask_id: Tensor,
        tile_masks: Tensor,
        columns: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
    ) -> BlockLayout:
        """Assemble a layout from a flat list of non-empty tiles (any order, no duplicates).

        ``batch, head, q_block, kv_block`` are int tensors of one length; ``is_full`` says which tiles are
        FULL; ``mask_id`` gives each PARTIAL tile its row of ``tile_masks`` (ignored for FULL tiles).
        ``columns`` is ``(batch, head, q_block, key_position)`` of gathered columns, or ``None``.
        ``block_size`` an int means a square tile.
        """
        block_size = block_shape(block_size)
        bm, bn = block_size
        b_dim, h_dim = lead_shape
        qb_dim = -(-q_len // bm)

        def rows(b: Tensor, h: Tensor, qb: Tensor, *values: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
            row = (b.long() * h_dim + h.long()) * qb_dim + qb.long()
            # Entries must be in (row, key block or column) order; lowering already produces them so.
            composite = row * (kv_len + 1) + values[0].long()
            if composite.numel() > 1 and not bool((composite[1:] >= composite[:-1]).all()):
                order = torch.argsort(composite)
                row, values = row[order], tuple(value[order] for value in values)
            counts = torch.bincount(row, minlength=b_dim * h_dim * qb_dim)
            starts = torch.cumsum(counts, 0) - counts
            shape = (b_dim, h_dim, qb_dim)
            return (
                counts.to(torch.int32).reshape(shape),
                starts.reshape(shape),
                [value.to(torch.int32).contiguous() for value in values],
            )

        full = is_full.bool()
        f_num, f_start, (f_idx,) = rows(batch[full], head[full], q_block[full], kv_block[full])
        part = ~full
        p_num, p_start, (p_idx, p_mid) = rows(batch[part], head[part], q_block[part], kv_block[part], mask_id[part])
        c_num = c_start = c_idx = None
        if columns is not None:
            cb, ch, cq, ck = columns
            c_num, c_start, (c_idx,) = rows(cb, ch, cq, ck)
        return cls(
            q_len=q_len,
            kv_len=kv_len,
            block_m=bm,
            block_n=bn,
            full_kv_num_blocks=f_num,
            full_kv_start=f_start,
            full_kv_indices=f_idx,
            kv_num_blocks=p_num,
            kv_start=p_start,
            kv_indices=p_idx,
            kv_mask_ids=p_mid,
            tile_masks=tile_masks,
            col_num=c_num,
            col_start=c_start,
            col_indices=c_idx,
        )

    def select_heads(self, heads: list[int]) -> BlockLayout:
        """The layout whose head ``h`` is this layout's head ``heads[h]``, row storage shared, not copied.

        Heads that use one pattern point at one copy of its rows: a per-head layout costs its distinct
        patterns' tiles plus O(heads x rows).
        """
        if not heads or any(
            isinstance(h, bool) or not isinstance(h, int) or not 0 <= h < self.num_heads for h in heads
        ):
            raise ValueError(f"heads: expected a non-empty list of head ids in [0, {self.num_heads}), got {heads!r}")
        index = torch.tensor(heads, dtype=torch.long, device=self.device)
        picked = {
            name: getattr(self, name)[:, index]
            for name in ("full_kv_num_blocks", "full_kv_start", "kv_num_blocks", "kv_start", "col_num", "col_start")
            if getattr(self, name) is not None
        }
        return replace(self, **picked)

    @classmethod
    def from_dense(cls, mask: Tensor, block_size: int | tuple[int, int] = (64, 64)) -> BlockLayout:
        """Exact layout of a dense boolean mask ``[B|1, H|1, q_len, kv_len]`` (or ``[H|1, q, kv]``);
        ``block_size`` an int means a square tile.

        O(q_len * kv_len): for tests and small cases; patterns lower analytically instead.
        """
        if mask.dim() == 3:
            mask = mask.unsqueeze(0)
        if mask.dim() != 4 or mask.dtype != torch.bool:
            raise ValueError(
                f"mask: expected a bool tensor [B|1, H|1, q_len, kv_len], got {mask.dtype} {tuple(mask.shape)}"
            )
        block_size = block_shape(block_size)
        bm, bn = block_size
        b_dim, h_dim, q_len, kv_len = mask.shape
        qb_dim, kb_dim = -(-q_len // bm), -(-kv_len // bn)
        padded = torch.zeros(b_dim, h_dim, qb_dim * bm, kb_dim * bn, dtype=torch.bool, device=mask.device)
        padded[:, :, :q_len, :kv_len] = mask
        tiles = padded.reshape(b_dim, h_dim, qb_dim, bm, kb_dim, bn).permute(0, 1, 2, 4, 3, 5)
        inside = torch.zeros_like(padded)
        inside[:, :, :q_len, :kv_len] = True
        inside_tiles = inside.reshape(b_dim, h_dim, qb_dim, bm, kb_dim, bn).permute(0, 1, 2, 4, 3, 5)
        count = tiles.sum((-1, -2))
        capacity = inside_tiles.sum((-1, -2))
        b, h, qb, kb = torch.nonzero(count > 0, as_tuple=True)
        is_full = count[b, h, qb, kb] == capacity[b, h, qb, kb]
        bitmaps = tiles[b, h, qb, kb]
        words = pack_bits(bitmaps[~is_full]) if bitmaps.numel() else torch.zeros(0, bm, bn // _WORD, dtype=torch.int32)
        mask_id = torch.zeros_like(b)
        if words.shape[0]:
            uniq, inverse = torch.unique(words.reshape(words.shape[0], -1), dim=0, return_inverse=True)
            mask_id[~is_full] = inverse
            words = uniq.reshape(-1, bm, bn // _WORD)
        return cls.from_tiles(
            q_len=q_len,
            kv_len=kv_len,
            block_size=block_size,
            lead_shape=(b_dim, h_dim),
            batch=b,
            head=h,
            q_block=qb,
            kv_block=kb,
            is_full=is_full,
            mask_id=mask_id,
            tile_masks=words.to(mask.device),
        )

    # ------------------------------------------------------------------ meaning
    def full_entries(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(batch, head, q_block, slot)`` of every FULL tile; ``slot`` indexes ``full_kv_indices``.

        Useful to scatter a layout into other forms (a tile grid, a dense mask, a transposed view).
        """
        return self._entries(self.full_kv_num_blocks, self.full_kv_start)

    def partial_entries(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(batch, head, q_block, slot)`` of every PARTIAL tile; ``slot`` indexes ``kv_indices`` and
        ``kv_mask_ids``."""
        return self._entries(self.kv_num_blocks, self.kv_start)

    def column_entries(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(batch, head, q_block, slot)`` of every gathered column; ``slot`` indexes ``col_indices``."""
        if self.col_num is None or self.col_start is None:
            raise ValueError("column_entries: this layout has no gathered columns (col_num is None)")
        return self._entries(self.col_num, self.col_start)

    def _entries(self, num: Tensor, start: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        row = torch.repeat_interleave(torch.arange(num.numel(), device=self.device), num.reshape(-1).long())
        slot = (
            torch.arange(row.numel(), device=self.device)
            - (torch.cumsum(num.reshape(-1).long(), 0) - num.reshape(-1).long())[row]
        )
        slot = slot + start.reshape(-1)[row]
        _, h_dim, qb_dim = num.shape
        return row // (h_dim * qb_dim), (row // qb_dim) % h_dim, row % qb_dim, slot

    def _tile_grid(self) -> tuple[Tensor, Tensor]:
        """(`TileClass` grid [B, H, QB, KB] as int8, mask-id grid or -1)."""
        b_dim, h_dim, qb_dim = self.full_kv_num_blocks.shape
        grid = torch.zeros(b_dim, h_dim, qb_dim, self.num_kv_blocks, dtype=torch.int8, device=self.device)
        mask_ids = torch.full(grid.shape, -1, dtype=torch.int64, device=self.device)
        b, h, qb, slot = self.full_entries()
        grid[b, h, qb, self.full_kv_indices[slot].long()] = FULL
        b, h, qb, slot = self.partial_entries()
        kb = self.kv_indices[slot].long()
        grid[b, h, qb, kb] = PARTIAL
        mask_ids[b, h, qb, kb] = self.kv_mask_ids[slot].long()
        return grid, mask_ids

    def to_dense(self) -> Tensor:
        """The exact token mask this layout computes: bool ``[B|1, H|1, q_len, kv_len]``."""
        bm, bn = self.block_size
        grid, mask_ids = self._tile_grid()
        b_dim, h_dim, qb_dim, kb_dim = grid.shape
        bits = unpack_bits(self.tile_masks, bn) if self.tile_masks.shape[0] else None
        tiles = (grid == FULL).view(b_dim, h_dim, qb_dim, kb_dim, 1, 1).expand(-1, -1, -1, -1, bm, bn).clone()
        part = grid == PARTIAL
        if bits is not None and part.any():
            tiles[part] = bits[mask_ids[part]]
        dense = tiles.permute(0, 1, 2, 4, 3, 5).reshape(b_dim, h_dim, qb_dim * bm, kb_dim * bn)
        dense = dense[:, :, : self.q_len, : self.kv_len].clone()
        if self.col_indices is not None:
            b, h, qb, slot = self.column_entries()
            col = self.col_indices[slot].long()
            q = qb.unsqueeze(-1) * bm + torch.arange(bm, device=self.device)  # [n, bm]
            keep = (q < self.q_len) & (col.unsqueeze(-1) <= q + (self.kv_len - self.q_len))
            n_idx = torch.nonzero(keep, as_tuple=True)
            dense[b[n_idx[0]], h[n_idx[0]], q[n_idx], col[n_idx[0]]] = True
        return dense

    def to_flex(self) -> Any:
        """The same mask as a FlexAttention ``BlockMask`` (block size ``block_size``).

        FULL tiles stay FULL; PARTIAL tiles and the tiles that hold gathered columns become partial
        blocks whose ``mask_mod`` reads this layout's bitmaps and column set. Flex stores every row
        padded to the full kv-block count, so this costs O(q blocks x kv blocks) memory.
        """
        from torch.nn.attention.flex_attention import BlockMask

        bm, bn = self.block_size
        grid, mask_ids = self._tile_grid()
        b_dim, h_dim, _qb_dim, _kb_dim = grid.shape
        columns = torch.zeros(b_dim, h_dim, self.kv_len, dtype=torch.bool, device=self.device)
        if self.col_indices is not None:
            b, h, qb, slot = self.column_entries()
            col = self.col_indices[slot].long()
            columns[b, h, col] = True
            # A tile holding gathered columns becomes at least PARTIAL: Flex must visit it.
            grid[b, h, qb, col // bn] = grid[b, h, qb, col // bn].clamp(min=PARTIAL)
        offset, kv_len = self.kv_len - self.q_len, self.kv_len
        # mask_mod indexes the bitmaps unconditionally, so give it one (never selected) when there are none.
        tile_masks = (
            self.tile_masks
            if self.tile_masks.shape[0]
            else torch.zeros(1, bm, bn // _WORD, dtype=torch.int32, device=self.device)
        )
        # FlexAttention may apply mask_mod inside FULL blocks too (its eager path does), so they answer True.
        mask_ids = torch.where(grid == FULL, -2, mask_ids)

        def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            b, h = b.clamp(max=b_dim - 1), h.clamp(max=h_dim - 1)
            kv = kv_idx.clamp(max=kv_len - 1)
            tile = mask_ids[b, h, q_idx // bm, kv // bn]
            word = tile_masks[tile.clamp(min=0), q_idx % bm, (kv % bn) // _WORD]
            bit = ((word >> (kv % _WORD)) & 1) == 1
            return (bit & (tile >= 0)) | (tile == -2) | (columns[b, h, kv] & (kv_idx <= q_idx + offset))

        def as_flex(selected: Tensor) -> tuple[Tensor, Tensor]:
            # Stable sort puts the selected kv blocks first, in ascending order.
            order = torch.argsort((~selected).to(torch.int8), dim=-1, stable=True)
            return selected.sum(-1).to(torch.int32), order.to(torch.int32)

        kv_num, kv_idx = as_flex(grid == PARTIAL)
        full_num, full_idx = as_flex(grid == FULL)
        return BlockMask.from_kv_blocks(
            kv_num,
            kv_idx,
            full_num,
            full_idx,
            BLOCK_SIZE=(bm, bn),
            mask_mod=mask_mod,
            seq_lengths=(self.q_len, self.kv_len),
        )

    def computed_pairs(self) -> int:
        """Query-key pairs the kernel evaluates: whole tiles (tails clipped) plus gathered columns."""
        bm, bn = self.block_size
        total = 0
        for (_, _, qb, slot), indices in (
            (self.full_entries(), self.full_kv_indices),
            (self.partial_entries(), self.kv_indices),
        ):
            rows = (self.q_len - qb * bm).clamp(max=bm)
            cols = (self.kv_len - indices[slot].long() * bn).clamp(max=bn)
            total += int((rows * cols).sum())
        if self.col_num is not None:
            qb = torch.arange(self.num_q_blocks, device=self.device).view(1, 1, -1)
            rows = (self.q_len - qb * bm).clamp(max=bm)
            total += int((rows * self.col_num.long()).sum())
        return total

    def density(self) -> float:
        """Fraction of the q_len x kv_len plane (per batch and head entry) that the kernel computes."""
        entries = self.batch_size * self.num_heads
        return self.computed_pairs() / (entries * self.q_len * self.kv_len)

    @property
    def nbytes(self) -> int:
        """Memory held by the layout's tensors."""
        return sum(t.numel() * t.element_size() for name in _TENSOR_FIELDS if (t := getattr(self, name)) is not None)

    def num_tiles(self) -> tuple[int, int]:
        """(FULL tiles, PARTIAL tiles) over all batch and head entries."""
        return int(self.full_kv_num_blocks.sum()), int(self.kv_num_blocks.sum())

    def __repr__(self) -> str:
        full, partial = self.num_tiles()
        cols = int(self.col_num.sum()) if self.col_num is not None else 0
        return (
            f"BlockLayout(q_len={self.q_len}, kv_len={self.kv_len}, block_size={self.block_size}, "
            f"batch={self.batch_size}, heads={self.num_heads}, full_tiles={full}, partial_tiles={partial}, "
            f"distinct_bitmaps={self.tile_masks.shape[0]}, gathered_columns={cols}, density={self.density():.4f})"
        )

    def summary(self) -> str:
        """Printable multi-line summary: sizes, tile counts, row-length spread and memory."""
        full, partial = self.num_tiles()
        per_row = self.full_kv_num_blocks.long() + self.kv_num_blocks.long()
        nbytes = self.nbytes
        lines = [
            f"BlockLayout  q_len={self.q_len}  kv_len={self.kv_len}  block={self.block_m}x{self.block_n}",
            f"  broadcast   batch={self.batch_size}  heads={self.num_heads}  q_blocks={self.num_q_blocks}  kv_blocks={self.num_kv_blocks}",
            f"  tiles       full={full}  partial={partial}  distinct bitmaps={self.tile_masks.shape[0]}",
            f"  tiles/row   min={int(per_row.min())}  mean={float(per_row.float().mean()):.1f}  max={int(per_row.max())}",
            f"  density     {self.density():.5f} of the q x kv plane",
            f"  memory      {nbytes / 2**20:.2f} MiB",
        ]
        if self.col_num is not None:
            lines.insert(3, f"  columns     gathered={int(self.col_num.sum())}  max/row={int(self.col_num.max())}")
        return "\n".join(lines)
