"""Chunked prefill: a chunk of a prompt attends as its rows do in the whole prompt.

Position-relative patterns agree by bottom-right alignment alone; `LastQueries` agrees once the chunk is
told the prompt's total length (`MaskContext.prompt_len`). Checked on the token truth, on every lowering
path, and through the Hugging Face integration against one whole-prompt prefill.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseattn import LastQueries, Streaming, Triangle, lower
from sparseattn.patterns import MaskContext
from sparseattn.testing.strategies import patterns


@st.composite
def chunks(draw: st.DrawFn) -> tuple[int, int, int]:
    """(prompt_len, kv_len, q_len): a chunk of q_len queries ending at kv_len inside a prompt."""
    prompt = draw(st.integers(1, 160))
    kv = draw(st.integers(1, prompt))
    return prompt, kv, draw(st.integers(1, kv))


@settings(max_examples=60, deadline=None)
@given(patterns(max_len=160), chunks())
def test_a_chunk_given_the_prompt_length_attends_as_its_rows_do_in_the_whole_prompt(pattern, chunk):
    prompt, kv, q = chunk
    whole = pattern.to_dense(prompt)
    assert torch.equal(pattern.to_dense(q, kv, prompt_len=prompt), whole[:, kv - q : kv, :kv])


@settings(max_examples=30, deadline=None)
@given(patterns(max_len=160), chunks(), st.sampled_from([(16, 32), (32, 64), (64, 32)]), st.booleans(), st.booleans())
def test_lowering_a_chunk_is_exact_on_every_path(pattern, chunk, block, by_segments, intervals):
    prompt, kv, q = chunk
    layout = lower(pattern, q, kv, block_size=block, prompt_len=prompt, by_segments=by_segments, intervals=intervals)
    heads = layout.to_dense().shape[1]
    truth = pattern.to_dense(q, kv, num_heads=pattern.num_heads, prompt_len=prompt)
    assert torch.equal(layout.to_dense()[0], truth.expand(heads, q, kv))


def test_without_the_prompt_length_a_chunk_ends_the_prompt():
    # Rows 4-5 of a 6-token chunk of a 10-token prompt: last rows of the chunk, not of the prompt.
    assert LastQueries(2).to_dense(6, 6)[0, 4:].all()
    assert not LastQueries(2).to_dense(6, 6, prompt_len=10).any()
    assert LastQueries(2).to_dense(4, 10, prompt_len=10)[0, 2:].all()


def test_prompt_length_shorter_than_the_cache_is_refused():
    with pytest.raises(ValueError, match="prompt_len: expected None or at least kv_len=8"):
        MaskContext(4, 8, prompt_len=7)
    with pytest.raises(ValueError, match="prompt_len: expected None or at least kv_len=8"):
        lower(Triangle(), 4, 8, prompt_len=7)


def test_streaming_needs_no_prompt_length():
    pattern = Streaming(sink=3, window=7)
    whole = pattern.to_dense(40)
    assert torch.equal(pattern.to_dense(12, 30), whole[:, 18:30, :30])
