"""The long-context model on its real weights: Qwen2.5-Coder-0.5B-Instruct (qwen2, 14 query / 2 kv heads,
head dim 64), one short needle prompt on the CPU in fp32.

Dense must find the needle; TriangleMix through the Triton kernel (GQA 7:1, head dim 64, in Triton's
interpreter here) must keep dense's answer token by token. The weights (491 MB) are not part of the
default set-up: `bash scripts/fetch_qwen.sh` fetches them, or ``$SPARSEATTN_QWEN_GGUF`` names a copy.
"""

import os

import pytest
import torch

pytest.importorskip("transformers")
from sparseattn import Causal, Triangle
from sparseattn.eval.fidelity import compare_logits
from sparseattn.eval.generation import answer
from sparseattn.eval.scoring import score
from sparseattn.eval.tasks import TaskGenerator
from sparseattn.integrations import gguf_model, gguf_tokenizer, use_dense, use_schedule
from sparseattn.integrations.model_loading import qwen_gguf
from sparseattn.schedule import LayerSchedule

try:
    GGUF = str(qwen_gguf())
except FileNotFoundError as missing:
    pytest.skip(f"Qwen2.5-Coder-0.5B-Instruct weights absent: {missing}", allow_module_level=True)

# The published Qwen2.5-7B split scaled to 24 layers (conf/model/qwen25_coder_05b.yaml: triangle from 17),
# with window and last rows scaled down to the short prompt as the SmolLM2 regression test does.
TRIANGLEMIX = LayerSchedule([{"layers": "17-", "pattern": Triangle(sink=8, window=128, last=32)}], default=Causal())


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="the Triton path needs TRITON_INTERPRET=1 on CPU")
def test_qwen_answers_dense_and_trianglemix_keeps_the_answer():
    torch.manual_seed(0)
    tokenizer = gguf_tokenizer(GGUF)
    model = gguf_model(GGUF, dtype="float32", device="cpu")
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (14, 2)
    sample = TaskGenerator(tokenizer, seed=0).sample("niah_single", 768, 0)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.decode(sample.prompt_ids)
    use_dense(model)
    dense = answer(model, tokenizer, sample.prompt_ids, max_new_tokens=sample.max_new_tokens)
    assert score(dense.text, sample.references, sample.metric) == 1.0, dense.text
    attention = use_schedule(model, TRIANGLEMIX, impl="triton")
    got = answer(model, tokenizer, sample.prompt_ids, max_new_tokens=sample.max_new_tokens, force=dense.tokens)
    use_dense(model)
    assert attention.calls["sparse_prefill"] >= 7, attention.calls  # the triangle layers ran sparse
    fidelity = compare_logits(dense.forced_logits, got.forced_logits)
    assert bool(fidelity.top1.all()), fidelity
    assert torch.isfinite(fidelity.kl).all()
