"""The Hugging Face integration on the GPU: the Triton path equals the fp32 reference path of the same
model, dense layers through our kernel equal cuDNN, generate() and batches work, SmolLM2 (when staged).

Models are small random Llamas with the 8B's head geometry (head dim 128, GQA 4:1) in bf16; the oracle
is the same model with ``impl="reference"`` (fp32 attention on the identical layouts), compared on the
last position's logits relative to their scale.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

from sparseattn import Causal, Triangle
from sparseattn.estimation import VerticalSlash
from sparseattn.schedule import LayerSchedule

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
transformers = pytest.importorskip("transformers")
from sparseattn.integrations import gguf_model, random_model, use_schedule  # noqa: E402

SHAPE = dict(
    hidden_size=1024,
    intermediate_size=2048,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    vocab_size=1000,
    max_position_embeddings=16384,
)
MIX = LayerSchedule([{"layers": "2-", "pattern": Triangle(sink=8, window=256, last=64)}], default=Causal())


@pytest.fixture(scope="module")
def model():
    return random_model("llama", SHAPE, dtype="bfloat16", device="cuda", seed=0)


def last_logits(model, ids, schedule, **options):
    attention = use_schedule(model, schedule, **options)
    with torch.inference_mode():
        logits = model(ids, logits_to_keep=1).logits[:, -1].float()
    return logits, attention


def assert_close_relative(got, expected, tol=3e-2):
    scale = expected.abs().max()
    assert torch.isfinite(got).all()
    assert float((got - expected).abs().max() / scale) < tol


@pytest.mark.parametrize("length", [2048, 5000])
def test_trianglemix_triton_equals_reference(model, length):
    ids = torch.randint(0, SHAPE["vocab_size"], (2, length), device="cuda")
    expected, _ = last_logits(model, ids, MIX, impl="reference", causal_backend="sparse")
    got, attention = last_logits(model, ids, MIX, impl="triton", sdpa_backend="cudnn")
    assert attention.calls == {"dense_prefill": 2, "sparse_prefill": 2}
    assert_close_relative(got, expected)


def test_dense_through_our_kernel_equals_cudnn(model):
    ids = torch.randint(0, SHAPE["vocab_size"], (1, 4096), device="cuda")
    cudnn, _ = last_logits(model, ids, LayerSchedule.uniform(Causal()), sdpa_backend="cudnn")
    ours, attention = last_logits(model, ids, LayerSchedule.uniform(Causal()), causal_backend="sparse")
    assert attention.calls == {"sparse_prefill": 4}
    assert_close_relative(ours, cudnn)


def test_vertical_slash_layers_run_on_the_gpu(model):
    ids = torch.randint(0, SHAPE["vocab_size"], (1, 4096), device="cuda")
    schedule = LayerSchedule(
        [{"layers": "2-", "pattern": Triangle()}], default=VerticalSlash(vertical=4096, slash=4096)
    )
    dense, _ = last_logits(model, ids, LayerSchedule.uniform(Causal()), causal_backend="sparse")
    # Budgets as long as the prompt keep every causal pair in the shallow layers.
    full_budget, attention = last_logits(
        model, ids, LayerSchedule([{"layers": "all", "pattern": VerticalSlash(vertical=4096, slash=4096)}])
    )
    assert attention.schedule.estimates == 4
    assert_close_relative(full_budget, dense)
    got, attention = last_logits(model, ids, schedule)
    assert torch.isfinite(got).all() and attention.calls == {"sparse_prefill": 4}


def test_generate_with_a_schedule(model):
    ids = torch.randint(0, SHAPE["vocab_size"], (2, 3000), device="cuda")
    attention = use_schedule(model, MIX)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
    assert out.shape == (2, 3004)
    assert attention.calls == {"dense_prefill": 2, "sparse_prefill": 2, "dense_decode": 12}


def test_smollm2_on_the_gpu():
    """Real weights when SMOLLM2_GGUF names a copy of the GGUF (the GPU machine may lack the package)."""
    path = os.environ.get("SMOLLM2_GGUF", "")
    if not Path(path).is_file():
        pytest.skip("SMOLLM2_GGUF does not name a GGUF file")
    model = gguf_model(path, dtype="bfloat16", device="cuda")
    ids = torch.randint(0, model.config.vocab_size, (1, 6000), device="cuda")
    dense, _ = last_logits(model, ids, LayerSchedule.uniform(Causal()), impl="reference", causal_backend="sparse")
    window = LayerSchedule.uniform(Triangle(sink=8, window=8192, last=64))  # wider than the prompt: dense
    got, attention = last_logits(model, ids, window)
    assert attention.calls == {"sparse_prefill": 30}
    assert_close_relative(got, dense)
    # The accuracy experiments' schedule: the Triton path equals the fp32 reference on real weights.
    mix = LayerSchedule([{"layers": "15-", "pattern": Triangle(sink=8, window=512, last=128)}], default=Causal())
    expected, _ = last_logits(model, ids, mix, impl="reference", causal_backend="sparse")
    got, attention = last_logits(model, ids, mix)
    assert attention.calls == {"dense_prefill": 15, "sparse_prefill": 15}
    assert_close_relative(got, expected)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_model_spread_over_two_gpus_prefills_like_one():
    """What ``from_pretrained(..., device_map="auto")`` does, on a random model: accelerate's balanced map."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    spread = random_model("llama", SHAPE, dtype="bfloat16", device="cpu", seed=3)
    single = copy.deepcopy(spread).to("cuda:0")
    ids = torch.randint(0, SHAPE["vocab_size"], (1, 4096), device="cuda:0")
    expected, _ = last_logits(single, ids, MIX)
    balanced = get_balanced_memory(spread, no_split_module_classes=["LlamaDecoderLayer"])
    device_map = infer_auto_device_map(spread, max_memory=balanced, no_split_module_classes=["LlamaDecoderLayer"])
    spread = dispatch_model(spread, device_map)
    layer_devices = {str(layer.self_attn.q_proj.weight.device) for layer in spread.model.layers}
    assert layer_devices == {"cuda:0", "cuda:1"}, device_map
    got, attention = last_logits(spread, ids, MIX)
    assert attention.calls == {"dense_prefill": 2, "sparse_prefill": 2}
    assert_close_relative(got, expected.to(got.device))
