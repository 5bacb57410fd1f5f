"""Classification soundness, support coverage and lowering exactness over random patterns."""

from hypothesis import given, settings
from hypothesis import strategies as st

from sparseattn.testing import (
    block_sizes,
    check_pattern,
    lengths,
    named_shapes,
    pattern_property_test,
    patterns,
    per_head_patterns,
    primitives,
)

test_primitives_are_exact = pattern_property_test(primitives(), exact=True, max_examples=150)

test_named_shapes_are_sound = pattern_property_test(named_shapes(), max_examples=80)

test_random_expressions = pattern_property_test(patterns(), max_examples=150)

test_per_head_patterns = pattern_property_test(per_head_patterns(), max_examples=80)


@settings(max_examples=40, deadline=None)
@given(
    p=patterns(max_leaves=3), sizes=lengths(max_len=300), block_size=st.sampled_from([(32, 32), (64, 64), (128, 64)])
)
def test_larger_lengths_and_blocks(p, sizes, block_size):
    check_pattern(p, *sizes, block_size)


@settings(max_examples=30, deadline=None)
@given(p=primitives(), block_size=block_sizes())
def test_single_query_row(p, block_size):
    check_pattern(p, 1, 97, block_size, exact=True)
