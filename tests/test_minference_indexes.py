"""MInference's index arrays built by ``experiments/minference_indexes.py`` equal, row block by row block,
what MInference's CUDA builder writes: its statement-by-statement transcription in test_minference_form."""

import importlib.util
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_minference_form import builder_row, lines

_SPEC = importlib.util.spec_from_file_location(
    "minference_indexes", Path(__file__).resolve().parents[1] / "experiments" / "minference_indexes.py"
)
assert _SPEC and _SPEC.loader
indexes = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(indexes)


def arrays(vertical: list[list[int]], slash: list[list[int]], n: int):
    # MInference passes verticals ascending and slashes descending, as int32 [1, H, NNZ].
    v = torch.tensor([sorted(x) for x in vertical], dtype=torch.int32)[None]
    s = torch.tensor([sorted(x, reverse=True) for x in slash], dtype=torch.int32)[None]
    return indexes.convert_vertical_slash_indexes(torch.tensor([n], dtype=torch.int32), v, s, n, 64, 64)


@settings(max_examples=60, deadline=None)
@given(st.integers(65, 400), st.data())
def test_arrays_equal_the_builders(n, data):
    vertical, slash = data.draw(lines(n, 2))
    block_count, block_offset, column_count, column_index = arrays(vertical, slash, n)
    rows = -(-n // 64)
    assert block_count.shape == column_count.shape == (1, 2, rows)
    assert block_offset.shape == (1, 2, rows, len(slash[0])) and column_index.shape == (1, 2, rows, len(vertical[0]))
    assert block_count.dtype == block_offset.dtype == column_count.dtype == column_index.dtype == torch.int32
    for h in range(2):
        for g in range(rows):
            blocks, columns = builder_row(sorted(vertical[h]), sorted(slash[h], reverse=True), 64 * (g + 1), 64)
            nb, nc = int(block_count[0, h, g]), int(column_count[0, h, g])
            assert block_offset[0, h, g, :nb].tolist() == blocks
            assert column_index[0, h, g, :nc].tolist() == columns
            assert not block_offset[0, h, g, nb:].any() and not column_index[0, h, g, nc:].any()


def test_hand_case_two_runs_and_a_gathered_column():
    # Row block 2 (queries 128..191, end 192): slash 0 -> window [128, 192); slash 150 -> [0, 64), a
    # second run. The vertical 100 lies between the runs: gathered; 10 lies inside [0, 64): not.
    block_count, block_offset, column_count, column_index = arrays([[10, 100]], [[0, 150]], 192)
    assert int(block_count[0, 0, 2]) == 2 and block_offset[0, 0, 2, :2].tolist() == [0, 128]
    assert int(column_count[0, 0, 2]) == 1 and int(column_index[0, 0, 2, 0]) == 100


def test_rejects_other_blocks_and_batches():
    v, s = torch.zeros(1, 1, 1, dtype=torch.int32), torch.zeros(1, 1, 1, dtype=torch.int32)
    with pytest.raises(ValueError, match="block_size_M"):
        indexes.convert_vertical_slash_indexes(torch.tensor([64]), v, s, 64, 128, 64)
    with pytest.raises(ValueError, match="seqlens"):
        indexes.convert_vertical_slash_indexes(torch.tensor([64, 64]), v, s, 64, 64, 64)


PEERS = Path(__file__).resolve().parents[1] / ".peers"


@pytest.mark.skipif(
    not (PEERS / "minference" / "cuda.py").exists(),
    reason="MInference's kernels not staged (experiments/stage_peers.sh)",
)
def test_minference_kernel_on_these_arrays_equals_the_oracle(monkeypatch):
    import math

    monkeypatch.syspath_prepend(str(PEERS))
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "experiments"))
    from minference.ops.pit_sparse_flash_attention_v2 import _triton_mixed_sparse_attention

    from sparseattn.estimation import VerticalSlashIndices

    device = "cuda" if torch.cuda.is_available() else "cpu"
    # Under the interpreter MInference's kernel mishandles bf16 (every row wrong, dense causal too): fp16.
    dtype = torch.bfloat16 if device == "cuda" else torch.float16
    gen = torch.Generator().manual_seed(0)
    n, d = 320, 64
    q, k, v = (torch.randn(1, 2, n, d, generator=gen).to(device, dtype) for _ in range(3))
    vertical, slash = [[0, 5, 77, 200], [3, 9, 130, 131]], [[0, 1, 40, 100, 190], [0, 2, 64, 65, 250]]
    built = arrays(vertical, slash, n)
    seqlens = torch.tensor([n], dtype=torch.int32, device=device)
    out = _triton_mixed_sparse_attention(q, k, v, seqlens, *(t.to(device) for t in built), d**-0.5, 64, 64)
    mask = VerticalSlashIndices(torch.tensor(vertical), torch.tensor(slash), form="minference", block_size=64)
    keep = mask.to_dense(n, n).to(device)
    scores = (q[0].float() @ k[0].float().transpose(-1, -2) * d**-0.5).masked_fill(~keep, -math.inf)
    expected = torch.softmax(scores, -1) @ v[0].float()
    assert (out[0].float() - expected).abs().max().item() < 2e-2


@pytest.mark.skipif(
    not (PEERS / "minference" / "cuda.py").exists(),
    reason="MInference's kernels not staged (experiments/stage_peers.sh)",
)
def test_the_benchmarks_authors_check_passes_on_structured_inputs(monkeypatch):
    """The dynamic benchmark's equality check of MInference's vertical-slash kernel against ours
    (`harness.authors_vertical_slash`, ours given the authors' rounded q) on the structured q/k it runs on,
    with the estimate's own lines; fp16 under the interpreter, bf16 on CUDA."""
    monkeypatch.syspath_prepend(str(PEERS))
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "experiments"))
    from harness import authors_vertical_slash, peer_module, structured_qkv

    from sparseattn.estimation import VerticalSlash

    module, where = peer_module("minference.ops.pit_sparse_flash_attention_v2")
    assert module is not None, where
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float16
    q, k, v = structured_qkv(4, 2, 1024, 64, device=device, dtype=dtype)
    checks: dict[str, str] = {}

    def check(name, fn):
        fn()
        checks[name] = "pass"

    authors_vertical_slash(
        module, VerticalSlash(64, 128), q, k, v, check=check, timed=lambda *args: None, checks=checks
    )
    assert checks["authors_vertical_slash_equals_ours"] == "pass"
    assert "authors_vertical_slash_max_diff_unrounded_q" in checks  # the raw difference is reported beside it
