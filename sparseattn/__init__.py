"""sparseattn: composable sparse attention for long-context prefill.

Patterns (`sparseattn.patterns`) lower to one `BlockLayout`, which one block-sparse Triton kernel
consumes through `sparse_attention`.
"""

from sparseattn.attention import sparse_attention
from sparseattn.layout import BlockLayout
from sparseattn.lowering import lower
from sparseattn.patterns import (
    AShape,
    BlockBand,
    Causal,
    Columns,
    Diagonals,
    Documents,
    Full,
    LastQueries,
    Pattern,
    PerHead,
    Sink,
    Streaming,
    Triangle,
    Window,
)

__all__ = [
    "AShape",
    "BlockBand",
    "BlockLayout",
    "Causal",
    "Columns",
    "Diagonals",
    "Documents",
    "Full",
    "LastQueries",
    "Pattern",
    "PerHead",
    "Sink",
    "Streaming",
    "Triangle",
    "Window",
    "lower",
    "sparse_attention",
]
__version__ = "0.1.0"

# Per-layer schedules (layer 5) sit above the patterns and the layout they lower to.
from sparseattn.schedule import LayerSchedule

__all__ += ["LayerSchedule"]
