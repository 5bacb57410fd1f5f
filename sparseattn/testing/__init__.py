"""Test support for patterns and kernels: hypothesis strategies, pattern checks and oracle tolerances.

Property-test a new pattern with one line in your own test file::

    test_my_pattern = pattern_property_test(st.builds(MyPattern, st.integers(1, 64)))
"""

from sparseattn.testing.checks import (
    check_classify,
    check_layout_invariants,
    check_lowering,
    check_pattern,
    check_row_breaks,
    check_support,
    exact_tile_classes,
    layouts_differ,
    pattern_property_test,
)
from sparseattn.testing.strategies import (
    block_sizes,
    lengths,
    named_shapes,
    patterns,
    per_head_patterns,
    primitives,
)
from sparseattn.testing.tolerance import assert_close_to_oracle, oracle_and_tolerance

__all__ = [
    "assert_close_to_oracle",
    "block_sizes",
    "check_classify",
    "check_layout_invariants",
    "check_lowering",
    "check_pattern",
    "check_row_breaks",
    "check_support",
    "exact_tile_classes",
    "layouts_differ",
    "lengths",
    "named_shapes",
    "oracle_and_tolerance",
    "pattern_property_test",
    "patterns",
    "per_head_patterns",
    "primitives",
]
