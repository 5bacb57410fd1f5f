"""Integrations with other libraries; importing this package imports transformers (the ``hf`` extra)."""

from sparseattn.integrations.huggingface import ScheduledAttention, check_model, use_dense, use_schedule
from sparseattn.integrations.model_loading import gguf_model, gguf_tokenizer, random_model, smollm2_gguf
from sparseattn.integrations.timing import LayerTimer

__all__ = [
    "LayerTimer",
    "ScheduledAttention",
    "check_model",
    "gguf_model",
    "gguf_tokenizer",
    "random_model",
    "smollm2_gguf",
    "use_dense",
    "use_schedule",
]
