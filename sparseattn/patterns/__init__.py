"""Attention patterns: token-level truth, a mask algebra, and analytic tile classification."""

from sparseattn.patterns.algebra import And, Not, Or
from sparseattn.patterns.base import EMPTY, FULL, PARTIAL, MaskContext, Pattern, TileClass, Tiles
from sparseattn.patterns.columns import Columns, Diagonals
from sparseattn.patterns.documents import Documents
from sparseattn.patterns.dynamic import (
    BlockMass,
    BlockTopK,
    BlockTopKTiles,
    MixedHeads,
    VerticalSlash,
    VerticalSlashIndices,
)
from sparseattn.patterns.per_head import PerHead
from sparseattn.patterns.primitives import BlockBand, Causal, Full, LastQueries, Sink, Window
from sparseattn.patterns.shapes import AShape, Composite, Streaming, Triangle

__all__ = [
    "EMPTY",
    "FULL",
    "PARTIAL",
    "AShape",
    "And",
    "BlockBand",
    "BlockMass",
    "BlockTopK",
    "BlockTopKTiles",
    "Causal",
    "Columns",
    "Composite",
    "Diagonals",
    "Documents",
    "Full",
    "LastQueries",
    "MaskContext",
    "MixedHeads",
    "Not",
    "Or",
    "Pattern",
    "PerHead",
    "Sink",
    "Streaming",
    "TileClass",
    "Tiles",
    "Triangle",
    "VerticalSlash",
    "VerticalSlashIndices",
    "Window",
]
