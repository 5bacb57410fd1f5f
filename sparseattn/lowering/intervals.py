"""`IntervalProgram`: an expression over the analytic primitives, every term evaluated at once.

Each primitive keeps the pairs whose *quantity* lies in ``[lo, hi)``, and there are four quantities:
``q_pos - k`` (`Causal`, `Window`), ``k`` (`Sink`, `Full`), ``q_pos`` (`LastQueries`) and
``q_pos // bs - k // bs`` (`BlockBand`). Evaluated term by term, as the patterns' own methods do, an
expression costs a few torch operations per term and per question (breaks, classes, keys, bits); on
a GPU each is a kernel launch with its own host time, and the kernel benchmark's per-head mixture
spent hundreds of them. Compiled here, the terms become *atoms*
``(quantity, lo, hi)``: each question computes each quantity's span over the tiles once, answers for
all atoms together in a handful of operations, and only the And / Or / Not nodes and the choice of
the head's member remain per term. On CUDA the program goes one step further: `by_program.py`
encodes it as straight-line code that three Triton kernels run, a few dozen launches in all; the torch
answers below are then those kernels' oracle.

The source pattern stays the truth: the program gives the same classes and bits (tests compare them),
breaks that are a superset of the source's (every atom's cuts, shared by all heads), and tile keys
that identify equal bitmaps by the atoms' own positions. `compile_intervals` returns None for any
pattern it does not know term for term (index sets, documents, dynamic patterns, user subclasses),
which then lowers through its own methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

from sparseattn.memo import attached, peek, seed
from sparseattn.patterns.base import And, Not, Or, Pattern
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
from sparseattn.patterns.tiles import PARTIAL, MaskContext, Tiles

# Stands for an unbounded end of an atom's interval; far beyond any position difference.
_UNBOUNDED = 1 << 60

# Quantities: ("diagonal",) q_pos - k, ("key",) k, ("query",) q_pos, ("blocks", bs) q_pos//bs - k//bs.
Quantity = tuple[Any, ...]
_DIAGONAL: Quantity = ("diagonal",)
_KEY: Quantity = ("key",)
_QUERY: Quantity = ("query",)


@dataclass(frozen=True)
class Node:
    """``op`` is "atom" (``arg`` = the atom), "and" / "or" (``arg`` = child nodes) or "not" (one child)."""

    op: str
    arg: Any


Atom = tuple[Quantity, int, int]


def _atom_of(pattern: Pattern, ctx: MaskContext) -> Atom | None:
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
        return _QUERY, ctx.prompt_end - pattern.n, _UNBOUNDED  # type: ignore[attr-defined]
    if kind is BlockBand:
        return ("blocks", pattern.block_size), 0, pattern.blocks  # type: ignore[attr-defined]
    return None


def _plain_composite(pattern: Pattern) -> bool:
    """A `Composite` whose every answer is its expression's (none of them overridden)."""
    cls = type(pattern)
    return isinstance(pattern, Composite) and all(
        getattr(cls, name) is getattr(Composite, name) for name in ("mask", "classify", "tile_key", "row_breaks")
    )


def _node(pattern: Pattern, ctx: MaskContext) -> Node | None:
    atom = _atom_of(pattern, ctx)
    if atom is not None:
        return Node("atom", atom)
    if _plain_composite(pattern):
        return _node(pattern.expression, ctx)  # type: ignore[attr-defined]
    if type(pattern) in (And, Or):
        children = [_node(t, ctx) for t in pattern.terms]  # type: ignore[attr-defined]
        if any(c is None for c in children):
            return None
        return Node("and" if type(pattern) is And else "or", tuple(children))
    if type(pattern) is Not:
        child = _node(pattern.term, ctx)
        return None if child is None else Node("not", child)
    return None


def _fold(node: Node, leaf: Any, both: Any, either: Any, negate: Any) -> Any:
    """Evaluate ``node`` bottom-up: ``leaf(atom)``, binary ``both`` / ``either``, unary ``negate``."""
    if node.op == "atom":
        return leaf(node.arg)
    if node.op == "not":
        return negate(_fold(node.arg, leaf, both, either, negate))
    combine = both if node.op == "and" else either
    out = _fold(node.arg[0], leaf, both, either, negate)
    for child in node.arg[1:]:
        out = combine(out, _fold(child, leaf, both, either, negate))
    return out


def _atoms_in(node: Node) -> list[Atom]:
    found: list[Atom] = []
    _fold(node, found.append, lambda a, b: None, lambda a, b: None, lambda a: None)
    return found


def compile_intervals(pattern: Pattern, ctx: MaskContext) -> IntervalProgram | None:
    """The program of ``pattern`` under ``ctx``, or None when some term is not an interval primitive.

    A `PerHead` compiles when each member does and none depends on the head itself; any other pattern
    must not depend on the head.
    """
    if type(pattern) is PerHead:
        sources: tuple[Pattern, ...] = pattern.patterns
        if any(p.num_heads is not None for p in sources):
            return None
    elif pattern.num_heads is None:
        sources = (pattern,)
    else:
        return None
    members = [_node(p, ctx) for p in sources]
    if any(m is None for m in members):
        return None
    return IntervalProgram(pattern, ctx, tuple(members))  # type: ignore[arg-type]


@dataclass(frozen=True, eq=False)
class IntervalProgram(Pattern):
    """``source`` compiled under ``ctx`` (see the module docstring); lowering's stand-in for it.

    ``members[h]`` is head ``h``'s expression (one member: the pattern does not depend on the head).
    Only the questions lowering asks are answered: row breaks, tile classes, tile keys and token
    bits, all under the ``ctx`` it was compiled for.
    """

    source: Pattern
    ctx: MaskContext
    members: tuple[Node, ...]

    @property
    def num_heads(self) -> int | None:
        return self.source.num_heads

    @cached_property
    def atoms(self) -> list[Atom]:
        """Every distinct atom, those of one quantity next to each other."""
        found = list(dict.fromkeys(a for m in self.members for a in _atoms_in(m)))
        order = list(dict.fromkeys(q for q, _, _ in found))
        return sorted(found, key=lambda a: order.index(a[0]))

    @cached_property
    def quantities(self) -> list[tuple[Quantity, int, int]]:
        """``(quantity, first, stop)``: the atoms ``[first, stop)`` measure ``quantity``."""
        out: list[tuple[Quantity, int, int]] = []
        for i, (q, _, _) in enumerate(self.atoms):
            if out and out[-1][0] == q:
                out[-1] = (q, out[-1][1], i + 1)
            else:
                out.append((q, i, i + 1))
        return out

    @cached_property
    def table(self) -> Tensor:
        """int64 ``[3 + M, A]`` on the device: every atom's ``lo``, ``hi``, its quantity's position in
        `quantities`, then per member whether it uses the atom (0 / 1)."""
        which = [qi for qi, (_, first, stop) in enumerate(self.quantities) for _ in range(first, stop)]
        member_atoms = [set(_atoms_in(m)) for m in self.members]
        used = [[int(a in mine) for a in self.atoms] for mine in member_atoms]
        rows = [[lo for _, lo, _ in self.atoms], [hi for _, _, hi in self.atoms], which, *used]
        return torch.tensor(rows, dtype=torch.long, device=self.ctx.device)

    def _choose(self, head: Tensor, results: list[Tensor]) -> Tensor:
        """Each entry from its head's member: ``results[head]``, all broadcast to one shape."""
        if len(results) == 1:
            return results[0]
        shapes = {head.shape, *(r.shape for r in results)}
        shape = shapes.pop() if len(shapes) == 1 else torch.broadcast_shapes(*shapes)
        stacked = torch.stack([r if r.shape == shape else r.expand(shape) for r in results])
        index = head if head.shape == shape else head.expand(shape)
        return stacked.gather(0, index.unsqueeze(0)).squeeze(0)

    # ----------------------------------------------------------------- breaks
    def row_breaks(self, ctx: MaskContext) -> Tensor:
        """Every atom's cuts, for every head: each atom, hence every expression of them, keeps one class
        between two of them."""
        parts = []
        for quantity, first, stop in self.quantities:
            ends = {c for _, lo, hi in self.atoms[first:stop] for c in (lo, hi) if abs(c) < _UNBOUNDED}
            if not ends or quantity == _QUERY:
                continue  # a q_pos predicate has one class along a whole row
            cuts = torch.tensor([sorted(ends)], dtype=torch.long, device=ctx.device)
            if quantity == _DIAGONAL:
                parts.append(diagonal_breaks(ctx, cuts))
            elif quantity == _KEY:
                parts.append(key_breaks(ctx, cuts))
            else:
                parts.append(block_diagonal_breaks(ctx, quantity[1], cuts))
        return torch.cat(parts, dim=-1) if parts else no_breaks(ctx)

    # ----------------------------------------------------------------- classes
    def atom_classes(self, tiles: Tiles) -> Tensor:
        """int8 ``[len(tiles), A]``: every atom's class on every tile, as `interval_class` gives it."""
        return attached(tiles, ("atom_classes", self), lambda: self._atom_classes(tiles))

    def _atom_classes(self, tiles: Tiles) -> Tensor:
        los, his = [], []
        for quantity, _, _ in self.quantities:
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
        table = self.table
        spans = torch.stack(los + his, dim=1).view(len(tiles), 2, -1)[:, :, table[2]]  # [n, 2, A]
        # Ends of the span at or past lo, and ends before hi: 0, 1 or 2 of each; the class of
        # lo <= x < hi over the whole span is the smaller count.
        reached = (spans >= table[0]).sum(1, dtype=torch.int8)
        before = (spans < table[1]).sum(1, dtype=torch.int8)
        return torch.minimum(reached, before)

    def share_classes(self, probes: Tiles, tiles: Tiles, run: Tensor) -> None:
        """Give ``tiles`` the atom classes of ``probes``, tile ``i`` lying in the run of row breaks that
        ``probes[run[i]]`` stands for: every atom keeps one class along such a run."""
        classes = peek(probes, ("atom_classes", self))
        if classes is not None:
            seed(tiles, ("atom_classes", self), classes[run])

    def classify(self, tiles: Tiles) -> Tensor:
        leaves = dict(zip(self.atoms, self.atom_classes(tiles).unbind(1), strict=True))
        results = [_fold(m, leaves.__getitem__, torch.minimum, torch.maximum, lambda x: 2 - x) for m in self.members]
        return self._choose(tiles.head, results)

    # ----------------------------------------------------------------- keys
    def tile_key(self, tiles: Tiles) -> Tensor:
        """``[n, 1 + A]``: the head, then per atom its position where it is PARTIAL (the corner offset,
        first key, first query, or corner offset and first query modulo ``bs``: each fixes the atom's
        bits over the tile's extents) and a per-class constant where it is not, or is not used."""
        cls = self.atom_classes(tiles)
        table = self.table
        refs = []
        for quantity, _, _ in self.quantities:
            if quantity == _DIAGONAL:
                refs.append(tiles.corner_offset)
            elif quantity == _KEY:
                refs.append(tiles.k_start)
            elif quantity == _QUERY:
                refs.append(tiles.q_start)
            else:
                bs = quantity[1]
                refs.append(tiles.corner_offset * bs + tiles.q_start % bs)
        position = torch.stack(refs, dim=1)[:, table[2]]  # [n, A]
        if len(self.members) > 1:
            cls = cls * table[3:][tiles.head]  # an atom the head's member does not use: EMPTY
        key = torch.where(cls == PARTIAL, position, cls.long() + _CONSTANT_KEY)
        return torch.cat([tiles.head.view(-1, 1), key], dim=1)

    # ----------------------------------------------------------------- bits
    def mask(self, h: Tensor, q_idx: Tensor, kv_idx: Tensor, ctx: MaskContext) -> Tensor:
        q_pos = q_idx + ctx.offset
        table = self.table
        kept: dict[Atom, Tensor] = {}
        for quantity, first, stop in self.quantities:
            if quantity == _DIAGONAL:
                x = q_pos - kv_idx
            elif quantity == _KEY:
                x = kv_idx
            elif quantity == _QUERY:
                x = q_pos
            else:
                x = q_pos // quantity[1] - kv_idx // quantity[1]
            bounds = table[:2, first:stop].view(2, -1, *([1] * x.dim()))
            inside = (x >= bounds[0]) & (x < bounds[1])  # [stop - first, *x.shape]
            kept.update(zip(self.atoms[first:stop], inside.unbind(0), strict=True))
        results = [
            _fold(m, kept.__getitem__, torch.bitwise_and, torch.bitwise_or, torch.bitwise_not) for m in self.members
        ]
        out = self._choose(h, results)
        return out.expand(torch.broadcast_shapes(h.shape, q_idx.shape, kv_idx.shape))
