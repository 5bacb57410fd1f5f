"""Estimation: dynamic patterns, estimated from q and k per call (MInference's vertical-slash and
block-sparse heads, and block-sparse heads with an adaptive, mass-threshold budget).

``estimate(q, k)`` returns a concrete pattern (exact ``mask``, its own tiles and layout) that lowers and
runs like any other; estimates are constants for the gradient. This layer sits above the kernels (its
hot path runs the estimation kernels) and below the schedule.
"""

from sparseattn.estimation.block_mass import BlockMass
from sparseattn.estimation.block_topk import BlockTopK, BlockTopKTiles
from sparseattn.estimation.captured import CapturedEstimates
from sparseattn.estimation.head_tiles import HeadTiles
from sparseattn.estimation.minference_config import from_minference_json, load_yaml, to_yaml
from sparseattn.estimation.mixed_heads import MixedHeads
from sparseattn.estimation.vertical_slash import VerticalSlash
from sparseattn.estimation.vs_indices import VerticalSlashIndices
from sparseattn.estimation.vs_mass import VerticalSlashMass

__all__ = [
    "BlockMass",
    "BlockTopK",
    "BlockTopKTiles",
    "CapturedEstimates",
    "HeadTiles",
    "MixedHeads",
    "VerticalSlash",
    "VerticalSlashIndices",
    "VerticalSlashMass",
    "from_minference_json",
    "load_yaml",
    "to_yaml",
]
