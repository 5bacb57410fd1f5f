"""The line-sums kernels equal the torch sums of `vs_scores` (CPU: Triton's interpreter, small sizes), and their
launch configurations compile for Hopper without spilling.

bf16 is not tested here: the interpreter's bf16 ``tl.dot`` is wrong; tests/gpu/test_vs_logits_gpu.py covers it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from test_triton_vs_logits import case_inputs, cases, dot_atol

from sparseattn.estimation.vs_scores import column_sums, diagonal_sums, last_query_probs
from sparseattn.kernels.attention.resources import HOPPER_SHARED_PER_PROGRAM
from sparseattn.kernels.estimation import triton_line_sums
from sparseattn.kernels.estimation.triton_line_sums import triton_line_sums as line_sums_kernel

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    """Fill the outputs with NaN, so an entry the kernels never write cannot pass as correct."""
    original = triton_line_sums._new_outputs
    monkeypatch.setattr(triton_line_sums, "_new_outputs", lambda *a: tuple(t.fill_(math.nan) for t in original(*a)))


def sums_rtol(q: torch.Tensor, k: torch.Tensor, scale: float, n: int) -> float:
    """Logits within ``a = dot_atol`` of the oracle's give probabilities within a factor ``exp(2a)`` (the
    row's normaliser moves by at most the same factor), so every sum of them within ``~2.5a`` relatively,
    plus fp32 rounding of the ``n``-term sums and of the exponentials."""
    return 2.5 * dot_atol(q, k, scale) + 4 * (n + 8) * torch.finfo(torch.float32).eps


@SETTINGS
@given(cases(heads_choices=(1, 2, 4, 6), kv_heads_choices=(1, 2, 3)))  # last_q 100: two row tiles of the sums kernel
def test_kernels_equal_the_torch_sums(case):
    q, k, n, scale = case_inputs(case)
    heads, kv_len = q.shape[1], k.shape[2]

    columns, diagonals = line_sums_kernel(q, k, n, scale)
    probs = last_query_probs(q, k, n, scale)

    rtol = sums_rtol(q, k, scale, n)
    for got, want in ((columns, column_sums(probs)), (diagonals, diagonal_sums(probs))):
        assert got.dtype == torch.float32 and got.shape == (heads, kv_len)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=rtol, atol=1e-7)
    # Every row's probabilities sum to one, and each lies on one column and one diagonal.
    for got in (columns, diagonals):
        torch.testing.assert_close(got.sum(-1), torch.full((heads,), float(n)), rtol=1e-5, atol=1e-5)


def test_a_diagonal_collects_the_rows_keys_across_block_edges():
    """Equal logits: row r (at kv_len - n + r) spreads 1 / (kv_len - n + r + 1) over its keys, so diagonal d
    holds one such share from every row that reaches it; 200 keys put the diagonals of the last rows in
    several 64-wide blocks of keys and of diagonals."""
    n, kv_len = 70, 200
    q = torch.zeros(1, 2, kv_len, 16)
    k = torch.zeros(1, 1, kv_len, 16)
    columns, diagonals = line_sums_kernel(q, k, n, 1.0)
    share = 1.0 / torch.arange(kv_len - n + 1, kv_len + 1, dtype=torch.float64)  # [n] row r's share
    pos = torch.arange(kv_len - n, kv_len)
    want_diagonals = torch.stack([share[pos >= d].sum() for d in range(kv_len)])
    want_columns = torch.stack([share[pos >= c].sum() for c in range(kv_len)])
    torch.testing.assert_close(diagonals[0].double(), want_diagonals, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(columns[1].double(), want_columns, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "over, name, words",
    [
        (dict(q=torch.randn(1, 4, 8, 16).double()), "q", "float64"),
        (dict(k=torch.randn(1, 3, 12, 16)), "k", "Hkv dividing 4"),
        (dict(n=9), "n", "1..q_len=8"),
        (dict(scale=math.inf), "scale", "finite"),
    ],
)
def test_rejects_bad_inputs(over, name, words):
    args = dict(q=torch.randn(1, 4, 8, 16), k=torch.randn(1, 2, 12, 16), n=4, scale=0.25)
    args.update(over)
    with pytest.raises(ValueError, match=rf"^{name}: .*{words}"):
        line_sums_kernel(**args)


CHILD = """
import json
from sparseattn.kernels.attention.resources import line_sums_resources
found = {d: line_sums_resources(d) for d in (64, 128, 256)}
print(json.dumps({d: {k: [r.stack_bytes, r.shared_bytes] for k, r in rs.items()} for d, rs in found.items()}))
"""


def test_launch_configurations_compile_for_hopper_without_spills():
    """Compiled in a child process: this suite runs the interpreter, whose kernels cannot be compiled."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", CHILD], check=True, capture_output=True, text=True, env=env)
    for dim, kernels in json.loads(out.stdout.splitlines()[-1]).items():
        for kernel, (stack, shared) in kernels.items():
            assert stack == 0, f"{kernel} at head dim {dim} spills {stack} bytes"
            assert shared <= HOPPER_SHARED_PER_PROGRAM, f"{kernel} at head dim {dim}: {shared} bytes of shared memory"
