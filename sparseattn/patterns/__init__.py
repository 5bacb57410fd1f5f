"""Attention patterns: token-level truth, a mask algebra, and analytic tile classification."""

from sparseattn.patterns.base import And, Not, Or, Pattern
from sparseattn.patterns.columns import Columns, Diagonals
from sparseattn.patterns.documents import Documents
from sparseattn.patterns.per_head import PerHead
from sparseattn.patterns.primitives import BlockBand, Causal, Full, LastQueries, Sink, Window
from sparseattn.patterns.shapes import AShape, Composite, Streaming, Triangle
from sparseattn.patterns.tiles import EMPTY, FULL, PARTIAL, MaskContext, TileClass, Tiles

__all__ = [
    "EMPTY",
    "FULL",
    "PARTIAL",
    "AShape",
    "And",
    "BlockBand",
    "Causal",
    "Columns",
    "Composite",
    "Diagonals",
    "Documents",
    "Full",
    "LastQueries",
    "MaskContext",
    "Not",
    "Or",
    "Pattern",
    "PerHead",
    "Sink",
    "Streaming",
    "TileClass",
    "Tiles",
    "Triangle",
    "Window",
]
