"""`VerticalSlashIndices`: the concrete per-head pattern a `VerticalSlash` estimate returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sparseattn.estimation.minference_layout import minference_layout
from sparseattn.estimation.topk import PAD
from sparseattn.layout import BlockLayout
from sparseattn.lowering import lower
from sparseattn.lowering.tile_grid import index_table, layout_from_tile_grid, tile_bounds
from sparseattn.patterns.base import Pattern
from sparseattn.patterns.columns import Columns, Diagonals
from sparseattn.patterns.primitives import Causal
from sparseattn.patterns.tiles import MaskContext

FORMS = ("block", "token", "minference")


def _prefix(table: Tensor) -> Tensor:
    """``[H, size + 1]`` counts: entry ``x`` is the number of set positions below ``x``."""
    return torch.nn.functional.pad(table.long().cumsum(1), (1, 0))


def _count(prefix: Tensor, head: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Set positions in ``[lo, hi]`` for each head (empty ranges count 0)."""
    size = prefix.shape[1] - 1
    hi_c, lo_c = (hi + 1).clamp(0, size), lo.clamp(0, size)
    return (prefix[head, hi_c] - prefix[head, lo_c]).clamp(min=0)


def torch_minference_runs(
    slash: Tensor, block: int, num_row_blocks: int, first: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """`VerticalSlashIndices.minference_runs` as MInference's index builder walks it: one slash of every
    (head, row block) per step, largest diagonal first, so window ends ascend; a step opens a run when the
    window ends more than one block past the open run's end, else extends the run by a block when it
    ends past it. The oracle of `triton_minference_runs`, and the CPU path."""
    b = block
    heads, count = slash.shape
    dev = slash.device
    end_m = (torch.arange(first, num_row_blocks, device=dev) + 1).mul(b).view(1, -1)  # [1, G]
    slots = max(1, min(count, num_row_blocks + 1))
    starts = torch.full((heads, end_m.shape[1], slots), PAD, dtype=torch.long, device=dev)
    ends = starts.clone()
    cur_start = torch.zeros(heads, end_m.shape[1], dtype=torch.long, device=dev)
    cur_end = torch.zeros_like(cur_start)
    active = torch.zeros_like(cur_start, dtype=torch.bool)
    runs = torch.zeros_like(cur_start)  # runs closed so far
    for i in range(count - 1, -1, -1):  # slashes from the largest d down: window ends ascending
        d = slash[:, i : i + 1]  # [H, 1]
        valid = (d != PAD) & (d < end_m)
        e = torch.clamp(end_m - d, min=b)
        opens = valid & (~active | (e > cur_end + b))
        extends = valid & active & ~opens & (e > cur_end)
        close = opens & active
        # Slot `runs` is still padding until its run closes, so writing padding there is harmless.
        starts.scatter_(2, runs.unsqueeze(2), torch.where(close, cur_start, PAD).unsqueeze(2))
        ends.scatter_(2, runs.unsqueeze(2), torch.where(close, cur_end, PAD).unsqueeze(2))
        runs = runs + close.long()
        cur_start = torch.where(opens, e - b, cur_start)
        cur_end = torch.where(opens, e, torch.where(extends, cur_end + b, cur_end))
        active = active | opens
    if count:  # every run holds a slash, so the open one has a slot: runs < slots
        starts.scatter_(2, runs.unsqueeze(2), torch.where(active, cur_start, PAD).unsqueeze(2))
        ends.scatter_(2, runs.unsqueeze(2), torch.where(active, cur_end, PAD).unsqueeze(2))
    return starts, ends, torch.where(active, cur_end, 0)


@dataclass(frozen=True, eq=False)
class VerticalSlashIndices(Pattern):
    """Estimated vertical and slash lines, per head, and the token mask they stand for.

    ``vertical`` ``[H, V]``: key columns of each head, ascending; ``slash`` ``[H, S]``: diagonals
    ``d = q_pos - k`` of each head, ascending; both padded with `PAD` where a head keeps fewer. With
    ``Vh``/``Sh`` the sets of head ``h`` and ``B = block_size``:

    - ``form="block"``: keep ``(q, k)`` iff ``k <= q_pos`` and (``k in Vh`` or some ``d in Sh`` crosses the
      tile of query rows ``[B*(q//B), B*(q//B)+B)`` by keys ``[B*(k//B), B*(k//B)+B)``, in bounds). This
      holds every 64-wide key window MInference's kernel computes around a slash (for ``B = 64``), and
      MInference's gathered verticals; its index builder may also extend a merged run of windows by up
      to 63 further keys, which this mask leaves out.
    - ``form="token"``: keep ``(q, k)`` iff ``k <= q_pos`` and (``k in Vh`` or ``q_pos - k in Sh``).
    - ``form="minference"``: MInference's own mask, the rules of its index builder
      (``csrc/vertical_slash_index.cu``) and kernel. Query positions go in row blocks of ``B``; for the
      block ending at ``E = B * (q_pos // B + 1)``, take the slashes ``d < E`` from the largest down, each
      giving the unaligned key window ``[e - B, e)`` with ``e = max(E - d, B)``. A window starting past
      the current run's end ``+ B`` closes the run and opens a new one; one ending past the run's end (but
      not by more than ``B``) extends the run by ``B`` keys; the others lie inside it. Keep ``(q, k)`` iff
      ``k <= q_pos`` and (``k`` in a run, or ``k in Vh`` below the last run's end: the builder gathers
      verticals outside the runs and drops those past its last window). A block with no slash below
      ``E`` keeps nothing (MInference's builder reads past its slash list there; its forced local
      diagonals make that impossible in practice). Lowered exactly from the runs on any tiles
      (`minference_layout`), with a few host synchronisations (``block`` is the form built without any).

    >>> lines = VerticalSlashIndices(torch.tensor([[0]]), torch.tensor([[0, 3]]), form="token", block_size=32)
    >>> print(lines.render(6))
    #-----
    ##----
    #-#---
    #--#--
    ##--#-
    #-#--#
    """

    vertical: Tensor
    slash: Tensor
    form: str = "block"
    block_size: int = 64

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"form: expected one of {FORMS}, got {self.form!r}")
        for name in ("vertical", "slash"):
            t = getattr(self, name)
            if not isinstance(t, Tensor) or t.dim() != 2 or t.dtype not in (torch.int32, torch.int64):
                raise ValueError(f"{name}: expected an integer tensor [heads, count], got {getattr(t, 'shape', t)!r}")
            object.__setattr__(self, name, t.long())
        if self.vertical.shape[0] != self.slash.shape[0]:
            raise ValueError(f"slash: expected {self.vertical.shape[0]} heads like vertical, got {self.slash.shape[0]}")

    def __repr__(self) -> str:
        return (
            f"VerticalSlashIndices(heads={self.num_heads}, vertical={self.vertical.shape[1]}, "
            f"slash={self.slash.shape[1]}, form={self.form!r}, block_size={self.block_size})"
        )

    @property
    def num_heads(self) -> int:
        return int(self.vertical.shape[0])

    # ----------------------------------------------------------------- truth
    def mask(self, h: Tensor, q_idx: Tensor, kv_idx: Tensor, ctx: MaskContext) -> Tensor:
        dev = self.vertical.device
        h, q_idx, kv_idx = h.to(dev), q_idx.to(dev), kv_idx.to(dev)
        kv = kv_idx.clamp(0, ctx.kv_len - 1)
        q_pos = q_idx + ctx.offset
        columns = index_table(self.vertical, ctx.kv_len)[h, kv]
        if self.form == "minference":
            return (kv_idx <= q_pos) & self._minference_keep(h, q_pos, kv_idx, columns)
        slashes = index_table(self.slash, ctx.kv_len)
        if self.form == "token":
            d = q_pos - kv_idx
            lines = slashes[h, d.clamp(0, ctx.kv_len - 1)] & (d >= 0)
        else:
            first, last, k_lo, k_hi = tile_bounds(ctx.q_len, ctx.kv_len, self.block_size, dev)
            g, b = q_idx.clamp(0, ctx.q_len - 1) // self.block_size, kv // self.block_size
            lines = _count(_prefix(slashes), h, first[g] - k_hi[b], last[g] - k_lo[b]) > 0
        return (kv_idx <= q_pos) & (columns | lines)

    def minference_runs(self, num_row_blocks: int, first: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        """MInference's merged windows for each head and row block ``g`` (rows ``[B*g, B*g + B)``) from
        ``first`` (a chunk's first row block: those before it hold no query) up to ``num_row_blocks``.

        Returns ``starts``, ``ends`` (int64 ``[H, G, S]``, ``G = num_row_blocks - first``: the runs
        ``[start, end)`` in key order, then padding with ``start = end = `PAD```) and ``last_end``
        (``[H, G]``: the last run's end, 0 without one). ``S = max(1, min(slashes, G + 1))``: runs are
        disjoint, at least ``B`` keys long, and end before ``B * (g + 2)``, so row block ``g`` holds at
        most ``g + 2`` of them. On CUDA a Triton kernel walks the slashes (`triton_minference_runs`);
        elsewhere `torch_minference_runs`, its oracle.
        """
        if self.slash.is_cuda:
            from sparseattn.kernels.estimation.triton_minference_runs import triton_minference_runs

            return triton_minference_runs(self.slash, self.block_size, num_row_blocks, first, pad=PAD)
        return torch_minference_runs(self.slash, self.block_size, num_row_blocks, first)

    def _minference_keep(self, h: Tensor, q_pos: Tensor, kv_idx: Tensor, columns: Tensor) -> Tensor:
        """In a run of the query's row block, or a vertical below its last run's end (causality aside)."""
        shape = torch.broadcast_shapes(h.shape, q_pos.shape, kv_idx.shape)
        h, q_pos, kv_idx = h.expand(shape), q_pos.expand(shape), kv_idx.expand(shape)
        g = q_pos.clamp(min=0) // self.block_size
        starts, ends, last_end = self.minference_runs(int(g.max()) + 1)
        row_starts, row_ends = starts[h, g], ends[h, g]  # [..., S]
        slot = torch.searchsorted(row_starts, kv_idx.unsqueeze(-1).contiguous(), right=True) - 1
        inside = (slot >= 0) & (kv_idx.unsqueeze(-1) < row_ends.gather(-1, slot.clamp(min=0)))
        return inside.squeeze(-1) | (columns.expand(shape) & (kv_idx < last_end[h, g]))

    # ----------------------------------------------------------------- lowering
    def tile_grid(self, q_len: int, kv_len: int) -> Tensor:
        """bool ``[H, QB, KB]`` (block form): tiles of ``block_size`` some slash crosses.

        On CUDA one Triton launch decides every tile (`triton_slash_tiles`); elsewhere `torch_tile_grid`,
        its oracle.
        """
        if self.slash.is_cuda:
            from sparseattn.kernels.estimation.triton_slash_tiles import triton_slash_tiles

            return triton_slash_tiles(_prefix(index_table(self.slash, kv_len)), q_len, kv_len, self.block_size)
        return self.torch_tile_grid(q_len, kv_len)

    def torch_tile_grid(self, q_len: int, kv_len: int) -> Tensor:
        """`tile_grid` with torch operations (about sixty at 32K, estimation_ops_cpu.md; each a launch on a
        GPU): the oracle of `triton_slash_tiles`, and the CPU path."""
        first, last, k_lo, k_hi = tile_bounds(q_len, kv_len, self.block_size, self.slash.device)
        prefix = _prefix(index_table(self.slash, kv_len))
        head = torch.arange(self.num_heads, device=prefix.device).view(-1, 1)
        qb_dim, kb_dim, b = first.numel(), k_lo.numel(), self.block_size
        # Away from the short last blocks a tile's diagonal span depends on j = qb - kb only: decide each
        # (head, j) once, spread it over the grid, then redo the last query row and key column exactly.
        j = torch.arange(-(kb_dim - 1), qb_dim, device=prefix.device).view(1, -1)
        by_j = _count(prefix, head, j * b + first[0] - (b - 1), j * b + first[0] + (b - 1)) > 0  # [H, J]
        grid = by_j[
            :, (torch.arange(qb_dim, device=j.device).view(-1, 1) - torch.arange(kb_dim, device=j.device) + kb_dim - 1)
        ]
        head3 = head.view(-1, 1, 1)
        grid[:, -1:, :] = _count(prefix, head3, first[-1] - k_hi.view(1, 1, -1), last[-1] - k_lo.view(1, 1, -1)) > 0
        grid[:, :, -1:] = _count(prefix, head3, first.view(1, -1, 1) - k_hi[-1], last.view(1, -1, 1) - k_lo[-1]) > 0
        return grid

    @property
    def native_block_size(self) -> tuple[int, int] | None:
        """The block form is defined on square tiles of ``block_size``; the token and minference forms on
        any tiles (a minference row block may straddle tile rows: its rows are lowered piece by piece)."""
        return None if self.form != "block" else (self.block_size, self.block_size)

    def own_layout(
        self, q_len: int, kv_len: int, block_size: tuple[int, int], device: torch.device | None
    ) -> BlockLayout | None:
        """Slash tiles plus gathered verticals the tiles miss.

        ``form="block"`` builds the layout on the GPU without host synchronisation, on its own square
        tiles. ``form="token"`` goes through the analytic lowering of ``Causal() & (Columns | Diagonals)``
        (host side, any tiles). ``form="minference"`` builds it from `minference_runs` with torch
        operations where its data lives, on any tiles (`minference_layout`: tiles from prefix counts of
        run keys, bitmaps only for PARTIAL tiles, verticals gathered where every row keeps them); it
        synchronises with the host a few times, since its PARTIAL tiles and bitmaps depend on the data.
        ``lower(..., by_segments=False)`` skips this and lowers the mask tile by tile (the oracle).
        """
        if device is not None and device != self.vertical.device:
            return self.to(device).own_layout(q_len, kv_len, block_size, None)
        if self.form == "token":
            return lower(self.expression(), q_len, kv_len, block_size=block_size, device=self.vertical.device)
        if self.form == "minference":
            runs = self.minference_runs(-(-kv_len // self.block_size), first=(kv_len - q_len) // self.block_size)
            return minference_layout(
                runs, self.vertical, q_len=q_len, kv_len=kv_len, block_size=block_size, row_block=self.block_size
            )
        keep = self.tile_grid(q_len, kv_len)
        return layout_from_tile_grid(keep, q_len=q_len, kv_len=kv_len, block=self.block_size, columns=self.vertical)

    def to(self, device: torch.device | str) -> VerticalSlashIndices:
        return VerticalSlashIndices(self.vertical.to(device), self.slash.to(device), self.form, self.block_size)

    def expression(self) -> Pattern:
        """The token form in the mask algebra: ``Causal() & (Columns(per head) | Diagonals(per head))``."""

        def sets(t: Tensor) -> tuple[tuple[int, ...], ...]:
            return tuple(tuple(v for v in row if v != PAD) for row in t.tolist())

        return Causal() & (Columns(sets(self.vertical)) | Diagonals(sets(self.slash)))
