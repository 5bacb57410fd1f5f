"""`IntervalProgram`: an expression over the analytic primitives, every term evaluated at once.

Each primitive keeps the pairs whose *quantity* lies in ``[lo, hi)``, and there are four quantities:
``q_pos - k`` (`Causal`, `Window`), ``k`` (`Sink`, `Full`), ``q_pos`` (`LastQueries`) and
``q_pos // bs - k // bs`` (`BlockBand`). Evaluated term by term, as the patterns' own methods do, an
expression costs a few torch operations per term and per question (breaks, classes, keys, bits); on
a GPU each is a kernel launch worth about 12 us of host time (op_overhead_cuda.md), and the kernel
benchmark's per-head mixture spent about 500 of them. Compiled here, the terms become *atoms*
``(quantity, lo, hi)``: each question computes each quantity's span over the tiles once, answers for
all atoms together in a handful of operations, and only the And / Or / Not nodes and the choice of
the head's member remain per term.

The source pattern stays the truth: the program gives the same classes and bits (tests compare them),
breaks that are a superset of the source's (every atom's cuts, shared by all heads), and tile keys
that identify equal bitmaps by the atoms' own positions. `compile_intervals` returns None for any
pattern it does not know term for term (index sets, documents, dynamic patterns, user subclasses),
which then lowers through its own methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from sparseattn.patterns.algebra import And, Not, Or
from sparseattn.patterns.base import PARTIAL, MaskContext, Pattern, Tiles
from sparseattn.patterns.per_head import PerHead
from sparseattn.patterns.primitives import (
    _CONSTANT_KEY,
    BlockBand,
    Causal,
    Full,
    LastQueries,
    Sink,
    Window,
    block_diagonal_breaks,
    diagonal_breaks,
    key_breaks,
    no_breaks,
)
from sparseattn.patterns.shapes import Composite

# Stands for an unbounded end of an atom's interval; far beyond any position difference.
_UNBOUNDED = 1 << 60

# Quantities: ("diagonal",) q_pos - k, ("key",) k, ("query",) q_pos, ("blocks", bs) q_pos//bs - k//bs.
Quantity = tuple[Any, ...]
_DIAGONAL: Quantity = ("diagonal",)
_KEY: Quantity = ("key",)
_QUERY: Quantity = ("query",)


@dataclass(frozen=True)
class _Node:
    """``op`` is "atom" (``arg`` = atom index), "and" / "or" (``arg`` = child nodes) or "not" (one child)."""

    op: str
    arg: Any


def _atom_of(pattern: Pattern, ctx: MaskContext) -> tuple[Quantity, int, int] | None:
    kind = type(pattern)
    if kind is Full:
        return _KEY, -_UNBOUNDED, _UNBOUNDED
    if kind is Causal:
        return _DIAGONAL, 0, _UNBOUNDED
    if kind is Window:
        return _DIAGONAL, 0, pattern.size  # type: ignore[attr-defined]
    if kind is Sink:
        return _KEY, 0, pattern.size  # type: ignore[attr-defined]
    if kind is LastQueries:
        return _QUERY, ctx.kv_len - pattern.n, _UNBOUNDED  # type: ignore[attr-defined]
    if kind is BlockBand:
        return ("blocks", pattern.block_size), 0, pattern.blocks  # type: ignore[attr-defined]
    return None


def _plain_composite(pattern: Pattern) -> bool:
    """A `Composite` whose every answer is its expression's (none of them overridden)."""
    cls = type(pattern)
    return isinstance(pattern, Composite) and all(
        getattr(cls, name) is getattr(Composite, name) for name in ("mask", "classify", "tile_key", "row_breaks")
    )


class _Compiler:
    def __init__(self, ctx: MaskContext) -> None:
        self.ctx = ctx
        self.atoms: dict[tuple[Quantity, int, int], int] = {}

    def node(self, pattern: Pattern) -> _Node | None:
        atom = _atom_of(pattern, self.ctx)
        if atom is not None:
            return _Node("atom", self.atoms.setdefault(atom, len(self.atoms)))
        if _plain_composite(pattern):
            return self.node(pattern.expression)  # type: ignore[attr-defined]
        if type(pattern) in (And, Or):
            children = [self.node(t) for t in pattern.terms]  # type: ignore[attr-defined]
            if any(c is None for c in children):
                return None
            return _Node("and" if type(pattern) is And else "or", tuple(children))
        if type(pattern) is Not:
            child = self.node(pattern.term)  # type: ignore[attr-defined]
            return None if child is None else _Node("not", child)
        return None


def compile_intervals(pattern: Pattern, ctx: MaskContext) -> IntervalProgram | None:
    """The program of ``pattern`` under ``ctx``, or None when some term is not an interval primitive.

    A `PerHead` compiles when each member does and none depends on the head itself; any other pattern
    must not depend on the head.
    """
    compiler = _Compiler(ctx)
    if type(pattern) is PerHead:
        sources: tuple[Pattern, ...] = pattern.patterns  # type: ignore[attr-defined]
        if any(p.num_heads is not None for p in sources):
            return None
    elif pattern.num_heads is None:
        sources = (pattern,)
    else:
        return None
    members = [compiler.node(p) for p in sources]
    if any(m is None for m in members):
        return None
    return IntervalProgram(pattern, ctx, tuple(members), tuple(compiler.atoms))  # type: ignore[arg-type]


def _fold(node: _Node, leaf: Any, both: Any, either: Any, negate: Any) -> Tensor:
    """Evaluate ``node`` bottom-up: ``leaf(i)`` for atom ``i``, binary ``both`` / ``either``, unary ``negate``."""
    if node.op == "atom":
        return leaf(node.arg)
    if node.op == "not":
        return negate(_fold(node.arg, leaf, both, either, negate))
    combine = both if node.op == "and" else either
    out = _fold(node.arg[0], leaf, both, either, negate)
    for child in node.arg[1:]:
        out = combine(out, _fold(child, leaf, both, either, negate))
    return out


@dataclass(frozen=True, eq=False)
class IntervalProgram(Pattern):
    """``source`` compiled under ``ctx`` (see the module docstring); lowering's stand-in for it.

    ``members[h]`` is head ``h``'s expression (one member: the pattern does not depend on the head);
    ``atoms[i]`` is ``(quantity, lo, hi)``. Only the questions lowering asks are answered: row breaks,
    tile classes, tile keys and token bits, all under the ``ctx`` it was compiled for.
    """

    source: Pattern
    ctx: MaskContext
    members: tuple[_Node, ...]
    atoms: tuple[tuple[Quantity, int, int], ...]
    _tensors: dict[str, Tensor] = field(default_factory=dict, init=False, repr=False)

    @property
    def num_heads(self) -> int | None:
        return self.source.num_heads

    @property
    def quantities(self) -> list[Quantity]:
        return list(dict.fromkeys(q for q, _, _ in self.atoms))

    def _constants(self) -> dict[str, Tensor]:
        """Tables on the device, built once: every atom's bounds ``[2, A]`` and quantity ``[A]``, which
        atoms each member uses ``[M, A]``, and the bounds of each quantity's atoms ``[2, A_q]``."""
        if not self._tensors:
            quantities = self.quantities
            used = [[False] * len(self.atoms) for _ in self.members]
            for m, member in enumerate(self.members):

                def mark(i: int, row: list[bool] = used[m]) -> None:
                    row[i] = True

                _fold(member, mark, lambda a, b: None, lambda a, b: None, lambda a: None)
            table = [
                [lo for _, lo, _ in self.atoms],
                [hi for _, _, hi in self.atoms],
                [quantities.index(q) for q, _, _ in self.atoms],
            ]
            packed = torch.tensor(table, dtype=torch.long, device=self.ctx.device)
            self._tensors.update(
                bounds=packed[:2],
                column=packed[2],
                used=torch.tensor(used, dtype=torch.bool, device=self.ctx.device),
            )
            for qi, quantity in enumerate(quantities):
                mine = [i for i, (q, _, _) in enumerate(self.atoms) if q == quantity]
                self._tensors[f"bounds{qi}"] = packed[:2, mine]
        return self._tensors

    # ----------------------------------------------------------------- breaks
    def row_breaks(self, ctx: MaskContext) -> Tensor:
        """Every atom's cuts, for every head: each atom, hence every expression of them, keeps one class
        between two of them."""
        parts = []
        for quantity in self.quantities:
            cuts = sorted({c for q, lo, hi in self.atoms if q == quantity for c in (lo, hi) if abs(c) < _UNBOUNDED})
            if not cuts or quantity == _QUERY:
                continue  # a q_pos predicate has one class along a whole row
            values = torch.tensor([cuts], dtype=torch.long, device=ctx.device)
            if quantity == _DIAGONAL:
                parts.append(diagonal_breaks(ctx, values))
            elif quantity == _KEY:
                parts.append(key_breaks(ctx, values))
            else:
                parts.append(block_diagonal_breaks(ctx, quantity[1], values))
        return torch.cat(parts, dim=-1) if parts else no_breaks(ctx)

    # ----------------------------------------------------------------- classes
    def _spans(self, tiles: Tiles) -> tuple[list[Tensor], list[Tensor]]:
        """Smallest and largest value of each quantity over each tile."""
        los, his = [], []
        for quantity in self.quantities:
            if quantity == _DIAGONAL:
                lo, hi = tiles.diagonal_span
            elif quantity == _KEY:
                lo, hi = tiles.k_start, tiles.k_last
            elif quantity == _QUERY:
                lo, hi = tiles.q_start, tiles.q_last
            else:
                bs = quantity[1]
                lo = tiles.q_start // bs - tiles.k_last // bs
                hi = tiles.q_last // bs - tiles.k_start // bs
            los.append(lo)
            his.append(hi)
        return los, his

    def atom_classes(self, tiles: Tiles) -> Tensor:
        """int8 ``[len(tiles), A]``: every atom's class on every tile, as `interval_class` gives it."""
        key = ("atom_classes", self)
        if key not in tiles._memo:
            los, his = self._spans(tiles)
            c = self._constants()
            spans = torch.stack(los + his, dim=1).view(len(tiles), 2, -1)[:, :, c["column"]]  # [n, 2, A]
            # Each end of the span at or past lo, and each end before hi: 0, 1 or 2 of them; the class
            # of lo <= x < hi over the whole span is the smaller count.
            reached = (spans >= c["bounds"][0]).sum(1, dtype=torch.int8)
            before = (spans < c["bounds"][1]).sum(1, dtype=torch.int8)
            tiles._memo[key] = torch.minimum(reached, before)
        return tiles._memo[key]  # type: ignore[no-any-return]

    def _per_head(self, tiles_head: Tensor, results: list[Tensor]) -> Tensor:
        if len(results) == 1:
            return results[0]
        stacked = torch.stack(results, dim=1)  # [n, M, ...]
        index = tiles_head.view(-1, 1, *([1] * (stacked.dim() - 2))).expand(-1, 1, *stacked.shape[2:])
        return stacked.gather(1, index).squeeze(1)

    def classify(self, tiles: Tiles) -> Tensor:
        cls = self.atom_classes(tiles)
        results = [_fold(m, lambda i: cls[:, i], torch.minimum, torch.maximum, lambda x: 2 - x) for m in self.members]
        return self._per_head(tiles.head, results)

    # ----------------------------------------------------------------- keys
    def tile_key(self, tiles: Tiles) -> Tensor:
        """``[n, 1 + A]``: the head's member, then per atom its position where it is PARTIAL (the corner
        offset, first key, first query, or corner offset and first query modulo ``bs``, which fix the
        atom's bits over the tile's extents) and a per-class constant elsewhere or when unused."""
        cls = self.atom_classes(tiles)
        c = self._constants()
        refs = []
        for quantity in self.quantities:
            if quantity == _DIAGONAL:
                refs.append(tiles.corner_offset)
            elif quantity == _KEY:
                refs.append(tiles.k_start)
            elif quantity == _QUERY:
                refs.append(tiles.q_start)
            else:
                bs = quantity[1]
                refs.append(tiles.corner_offset * bs + tiles.q_start % bs)
        position = torch.stack(refs, dim=1)[:, c["column"]]  # [n, A]
        keep = cls == PARTIAL
        if len(self.members) > 1:
            keep &= c["used"][tiles.head]
        key = torch.where(keep, position, _CONSTANT_KEY + cls.long())
        return torch.cat([tiles.head.view(-1, 1), key], dim=1)

    # ----------------------------------------------------------------- bits
    def mask(self, h: Tensor, q_idx: Tensor, kv_idx: Tensor, ctx: MaskContext) -> Tensor:
        q_pos = q_idx + ctx.offset
        c = self._constants()
        atoms: dict[int, Tensor] = {}
        for qi, quantity in enumerate(self.quantities):
            if quantity == _DIAGONAL:
                x = q_pos - kv_idx
            elif quantity == _KEY:
                x = kv_idx
            elif quantity == _QUERY:
                x = q_pos
            else:
                x = q_pos // quantity[1] - kv_idx // quantity[1]
            mine = [i for i, (q, _, _) in enumerate(self.atoms) if q == quantity]
            bounds = c[f"bounds{qi}"].view(2, -1, *([1] * x.dim()))
            kept = (x >= bounds[0]) & (x < bounds[1])  # [A_q, *x.shape]
            atoms.update({i: kept[j] for j, i in enumerate(mine)})
        shape = torch.broadcast_shapes(h.shape, q_idx.shape, kv_idx.shape)
        results = [
            _fold(m, atoms.__getitem__, torch.bitwise_and, torch.bitwise_or, torch.bitwise_not).expand(shape)
            for m in self.members
        ]
        if len(results) == 1:
            return results[0]
        out = results[0]
        for i, r in enumerate(results[1:], start=1):
            out = torch.where(h == i, r, out)
        return out
