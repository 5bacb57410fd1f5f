"""`sparse_attention` is differentiable: the Triton backward through an autograd function, the oracle
through plain autograd, estimated patterns as constants, and a Hugging Face model trains through a
schedule (CPU: Triton's interpreter, fp16/fp32, small sizes)."""

from __future__ import annotations

import pytest
import torch

from sparseattn import Causal, Columns, Triangle, Window
from sparseattn.attention import sparse_attention
from sparseattn.estimation import VerticalSlash
from sparseattn.lowering import lower
from sparseattn.schedule import LayerSchedule
from sparseattn.testing.gradients import assert_grads_close_to_oracle


def leaves(batch, heads, kv_heads, q_len, kv_len, dim, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    shapes = ((batch, heads, q_len, dim), (batch, kv_heads, kv_len, dim), (batch, kv_heads, kv_len, dim))
    tensors = [torch.randn(s, generator=gen).to(dtype).requires_grad_() for s in shapes]
    dout = torch.randn(batch, heads, q_len, dim, generator=gen).to(dtype)
    return (*tensors, dout)


@pytest.mark.parametrize("impl", ["triton", "reference"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_gradients_through_sparse_attention(impl, dtype):
    """A pattern with gathered columns, chunked prefill, GQA 2:1: the gradients of ``out`` (with the lse
    returned too) equal fp64 autograd through the oracle."""
    pattern = Causal() & (Window(24) | Columns((2, 50, 51, 120)))
    q, k, v, dout = leaves(1, 4, 2, 90, 150, 32, dtype, 0)
    out, lse = sparse_attention(q, k, v, pattern, impl=impl, return_lse=True)
    # The oracle's lse is differentiable too; the Triton path returns it as a constant.
    assert out.requires_grad and lse.requires_grad == (impl == "reference")
    out.backward(dout)
    mask = pattern.to_dense(90, 150).view(1, 1, 90, 150)
    assert_grads_close_to_oracle((q.grad, k.grad, v.grad), q, k, v, mask, dout)


def test_inference_path_keeps_no_graph():
    q, k, v, _ = leaves(1, 2, 1, 64, 64, 32, torch.float32, 1)
    with torch.no_grad():
        out = sparse_attention(q, k, v, Triangle(sink=4, window=16, last=8))
    assert not out.requires_grad


def test_estimated_pattern_is_a_constant_for_the_gradient():
    """Vertical-slash estimated from the very q and k that require grad: the layout is a constant, and
    the gradients are those of attention on that fixed mask."""
    q, k, v, dout = leaves(1, 2, 1, 128, 128, 32, torch.float32, 2)
    estimate = VerticalSlash(vertical=8, slash=16, last_q=16, sink_columns=2, local_diagonals=4).estimate(q, k)
    layout = lower(estimate, 128, 128, device="cpu")
    sparse_attention(q, k, v, layout).backward(dout)
    assert_grads_close_to_oracle((q.grad, k.grad, v.grad), q, k, v, layout.to_dense(), dout)


transformers = pytest.importorskip("transformers")


def test_hugging_face_model_trains_through_the_schedule():
    """``model(ids, labels=ids).loss.backward()`` with a triangle schedule on the Triton path gives the
    parameter gradients of the stock model run densely under the same explicit mask."""
    from tiny_llama import TINY_LLAMA

    from sparseattn.integrations import random_model, use_schedule

    triangle = Triangle(sink=2, window=5, last=3)
    ids = torch.randint(0, TINY_LLAMA["vocab_size"], (2, 37), generator=torch.Generator().manual_seed(0))

    def model():
        return random_model("llama", TINY_LLAMA, dtype="float32", device="cpu", seed=1)

    dense = model()
    mask = triangle.to_dense(37).view(1, 1, 37, 37).expand(2, 1, 37, 37)
    dense(ids, attention_mask=mask, labels=ids).loss.backward()
    sparse = model()
    attention = use_schedule(sparse, LayerSchedule.uniform(triangle), impl="triton")
    loss = sparse(ids, labels=ids).loss
    loss.backward()
    assert attention.calls == {"sparse_prefill": TINY_LLAMA["num_hidden_layers"]}
    assert torch.isfinite(loss)
    got = dict(sparse.named_parameters())
    for name, param in dense.named_parameters():
        assert param.grad is not None and got[name].grad is not None, name
        assert torch.isfinite(got[name].grad).all(), name
        torch.testing.assert_close(got[name].grad, param.grad, atol=2e-5, rtol=1e-4, msg=name)
