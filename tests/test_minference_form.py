"""``form="minference"`` against a slow transcription of MInference's index builder and kernel.

The reference follows ``convert_vertical_slash_indexes_kernel`` (microsoft/MInference,
``csrc/vertical_slash_index.cu``) statement by statement for one head and one row block, then applies
what ``_triton_mixed_sparse_attn_fwd_kernel`` (``minference/ops/pit_sparse_flash_attention_v2.py``) does
with its output: every saved block start covers keys ``[start, start + BLOCK_N)`` under the causal mask,
every gathered column is attended by every row of the block.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseattn.estimation import VerticalSlashIndices, from_minference_json
from sparseattn.lowering import lower
from sparseattn.patterns import Streaming


def builder_row(vertical: list[int], slash_desc: list[int], end_m: int, block: int) -> tuple[list[int], list[int]]:
    """(block_offset, column_index) of one row block, as the CUDA builder writes them."""
    blocks: list[int] = []
    columns: list[int] = []
    s = v = 0
    v_idx = vertical[v]
    v += 1
    s_idx = slash_desc[s]
    s += 1
    while s_idx >= end_m:
        if s == len(slash_desc):  # the CUDA code reads past the list here; our form keeps nothing
            return [], []
        s_idx = slash_desc[s]
        s += 1
    s_idx = max(end_m - s_idx, block)
    range_start, range_end = s_idx - block, s_idx
    while True:
        if v_idx < range_end:
            if v_idx < range_start:
                columns.append(v_idx)
            if v < len(vertical):
                v_idx = vertical[v]
                v += 1
            else:
                v_idx = end_m + block
        else:
            if s < len(slash_desc):
                s_idx = max(end_m - slash_desc[s], block)
                s += 1
            else:
                blocks.extend(range(range_start, range_end, block))
                break
            if s_idx > range_end + block:
                blocks.extend(range(range_start, range_end, block))
                range_start, range_end = s_idx - block, s_idx
            elif s_idx > range_end:
                range_end += block
    return blocks, columns


def reference(vertical: list[list[int]], slash: list[list[int]], n: int, block: int) -> torch.Tensor:
    """bool [H, n, n]: the pairs MInference's kernel attends."""
    keep = torch.zeros(len(vertical), n, n, dtype=torch.bool)
    for h, (vs, ss) in enumerate(zip(vertical, slash, strict=True)):
        for start_m in range(0, n, block):
            blocks, columns = builder_row(sorted(vs), sorted(ss, reverse=True), start_m + block, block)
            for q in range(start_m, min(start_m + block, n)):
                for start_n in blocks:
                    for k in range(start_n, start_n + block):
                        if k <= q and k < n:
                            keep[h, q, k] = True
                for k in columns:
                    keep[h, q, k] = True
    return keep


def ours(vertical: list[list[int]], slash: list[list[int]], n: int, block: int, q_len: int | None = None):
    # VerticalSlashIndices holds each head's lines ascending (MInference sorts them itself).
    rows = lambda sets: torch.tensor([sorted(s) for s in sets])
    vs = VerticalSlashIndices(rows(vertical), rows(slash), form="minference", block_size=block)
    return vs.to_dense(q_len or n, n)


@st.composite
def lines(draw, n: int, heads: int):
    # MInference's budgets are equal across a layer's heads, its slashes include the main diagonal
    # (the forced local ones), both are distinct indices in [0, n).
    nv = draw(st.integers(1, 12))
    ns = draw(st.integers(1, 24))
    vertical = [draw(st.lists(st.integers(0, n - 1), min_size=nv, max_size=nv, unique=True)) for _ in range(heads)]
    slash = [[0, *draw(st.lists(st.integers(1, n - 1), min_size=ns, max_size=ns, unique=True))] for _ in range(heads)]
    return vertical, slash


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([32, 64]), st.integers(33, 200), st.data())
def test_minference_form_equals_the_builder(block, n, data):
    vertical, slash = data.draw(lines(n, 2))
    assert torch.equal(ours(vertical, slash, n, block), reference(vertical, slash, n, block))


def test_hand_case_merges_and_widens():
    # Block 32, the row block of queries 64..95 (end 96). Slashes 0, 20, 40, 90 give windows ending at
    # 96, 76, 56, 32 (90 clamps to 32): [0, 32) then [24, 56) extends it by 32 to [0, 64); [44, 76)
    # ends 12 past it: extended to [0, 96); [64, 96) inside. The vertical 95 is inside too.
    vertical, slash = [[95]], [[0, 20, 40, 90]]
    blocks, columns = builder_row([95], [90, 40, 20, 0], 96, 32)
    assert blocks == [0, 32, 64] and columns == []
    got = ours(vertical, slash, 96, 32)[0]
    assert torch.equal(got[64:], torch.ones(32, 96, dtype=torch.bool).tril(64))


def test_gathers_verticals_between_runs_and_drops_those_past_the_last_window():
    # Row block 96..127 (end 128), block 32: slash 0 -> [96, 128); slash 100 -> [0, 32). Verticals 40
    # (between the runs: gathered) and 130 > every window (dropped, and non-causal anyway).
    n = 160
    keep = ours([[40, 130]], [[0, 100]], n, 32)[0]
    assert bool(keep[100, 40]) and not bool(keep[100, 50])
    assert torch.equal(keep, reference([[40, 130]], [[0, 100]], n, 32)[0])
    # The smallest slash 5: the last window ends at 123 and the vertical 124 of row 127 is dropped.
    keep = ours([[124]], [[5]], 128, 32)[0]
    assert not bool(keep[127, 124])
    assert torch.equal(keep, reference([[124]], [[5]], 128, 32)[0])


def test_chunk_rows_equal_the_whole_prompt_rows():
    vertical, slash = [[3, 70, 150]], [[0, 9, 33, 100]]
    whole = ours(vertical, slash, 200, 32)
    assert torch.equal(ours(vertical, slash, 200, 32, q_len=57), whole[:, -57:])


def test_lowering_is_exact():
    vertical, slash = [[3, 70, 150], [0, 1, 2]], [[0, 9, 33, 100], [0, 64, 65, 190]]
    vs = VerticalSlashIndices(torch.tensor(vertical), torch.tensor(slash), form="minference", block_size=64)
    layout = lower(vs, 200, 200, block_size=(64, 64))
    assert torch.equal(layout.to_dense()[0], vs.to_dense(200, 200))


def test_minference_json_means_what_minference_means():
    config = [{"0": ["stream_llm", 100, 800, 1.0], "1": ["vertical_and_slash", 1000, 6096, 0.9]}]
    (layer,) = from_minference_json(config)
    # stream_llm is MInference's streaming kernel: n_init sink tokens and an n_local window counting
    # the query itself (its mask 0 <= q_pos - k < n_local), not blocks.
    assert layer.heads[0] == Streaming(sink=100, window=800)
    assert layer.heads[1].form == "minference"
    # 8K tokens: the pair count MInference's streaming kernel keeps.
    assert int(Streaming(sink=100, window=800).to_dense(8192).sum()) == 6_968_250
    (a_shape,) = from_minference_json([{"0": ["a_shape", 128, 3968, 1.0]}])
    assert a_shape == Streaming(sink=128, window=3968)
    with pytest.raises(ValueError, match="form"):
        VerticalSlashIndices(torch.tensor([[0]]), torch.tensor([[0]]), form="minference-ish")
