"""Model and tokenizer for the accuracy experiments, from a local Hugging Face folder or a GGUF file."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def load(spec: Mapping[str, Any], threads: int | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from ``spec``: ``hf_path`` (a local folder) or ``gguf_path`` (None: SmolLM2)."""
    if threads:
        torch.set_num_threads(int(threads))
    from sparseattn.integrations.models import gguf_model, gguf_tokenizer, resolve_device, resolve_dtype

    dtype, device = spec.get("dtype", "bfloat16"), spec.get("device", "auto")
    if spec.get("hf_path"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model: Any = AutoModelForCausalLM.from_pretrained(
            spec["hf_path"], dtype=resolve_dtype(dtype), local_files_only=True, attn_implementation="sdpa"
        )
        model = model.to(resolve_device(device))
        return model.eval(), AutoTokenizer.from_pretrained(spec["hf_path"], local_files_only=True)
    model = gguf_model(spec.get("gguf_path"), dtype=dtype, device=device)
    return model, gguf_tokenizer(spec.get("gguf_path"))
