"""Time to first token of a full prefill under a layer schedule (Hydra app; config: conf/ttft.yaml).

One job = one (model, schedule, length): build the model (kept between the jobs of a multirun in the
same process), switch it to the schedule through the Hugging Face integration, warm up with an untimed
prefill (full length by default), then time ``repeats`` prefills of ``length`` random tokens that return the logits of the last
position only. Layouts are rebuilt inside every timed prefill (a new prompt needs them), so lowering is
part of the TTFT. Writes ``ttft.json`` in the job directory: TTFT per repeat and median, the attention
time of every layer and the path it took, peak memory, the schedule, command, date, GPU and versions.

    python experiments/ttft.py model=llama31_8b schedule=trianglemix length=131072
    python experiments/ttft.py -m model=llama31_8b schedule=dense,trianglemix length=32768,65536,131072
    ./run.sh ttft model=tiny_llama length=512   # CPU: impl and sdpa_backend follow the device (auto)
"""

from __future__ import annotations

import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

# torch and the package load in the functions that run a job: a sweep's launching process (joblib's,
# submitit's) imports this script but runs no job, and importing torch there cost seconds per sweep.
if TYPE_CHECKING:
    import torch

    from sparseattn.schedule import LayerSchedule

_loaded: dict[str, torch.nn.Module] = {}


def load_model(model_cfg: DictConfig) -> torch.nn.Module:
    """The model of ``model_cfg.load``, reused while consecutive jobs ask for the same one."""
    import torch

    key = OmegaConf.to_yaml(model_cfg.load)
    if key not in _loaded:
        _loaded.clear()  # one model at a time: an 8B model and the next one need not fit together
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        _loaded[key] = instantiate(model_cfg.load)
    return _loaded[key]


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prefill(model: torch.nn.Module, ids: torch.Tensor, use_cache: bool) -> torch.Tensor:
    """Logits of the last position after one forward over ``ids`` (the KV cache is built and dropped)."""
    import torch

    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=use_cache, logits_to_keep=1)
    return out.logits


def resolve_device_defaults(cfg: DictConfig, device: torch.device) -> DictConfig:
    """``impl: auto`` and ``sdpa_backend: auto`` by the model's device: the Triton kernel and cuDNN on CUDA;
    on the CPU the dense masked reference and PyTorch's own SDPA choice (cuDNN has no CPU backend)."""
    cfg = cfg.copy()
    cuda = device.type == "cuda"
    if cfg.impl == "auto":
        cfg.impl = "triton" if cuda else "reference"
    if cfg.sdpa_backend == "auto":
        cfg.sdpa_backend = "cudnn" if cuda else None
    return cfg


def run_ttft(cfg: DictConfig, *, progress: bool = True) -> dict:
    """Measure one job of conf/ttft.yaml; returns the record written to ``ttft.json``."""
    import torch

    from sparseattn.integrations import LayerTimer, use_schedule

    if cfg.device_per_job and torch.cuda.is_available():
        gpu = HydraConfig.get().job.num % torch.cuda.device_count()
        cfg.model.load.device = f"cuda:{gpu}"
        torch.cuda.set_device(gpu)
    model = load_model(cfg.model)
    device = model.get_input_embeddings().weight.device
    cfg = resolve_device_defaults(cfg, device)
    timer = LayerTimer() if cfg.layer_timing else None
    attention = use_schedule(
        model,
        instantiate(cfg.schedule),
        impl=cfg.impl,
        causal_backend=cfg.causal_backend,
        sdpa_backend=cfg.sdpa_backend,
        timer=timer,
    )
    schedule = attention.schedule
    generator = torch.Generator().manual_seed(cfg.seed)
    ids = torch.randint(model.config.vocab_size, (cfg.batch, cfg.length), generator=generator).to(device)

    label = attention_label(cfg, schedule)
    bar = tqdm(total=1 + cfg.repeats, desc=f"{cfg.model.name} {label} {cfg.length}", disable=not progress)
    prefill(model, ids[:, : min(cfg.warmup_length, cfg.length)], cfg.use_cache)
    bar.update()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, logits = [], None
    for _ in range(cfg.repeats):
        del logits
        schedule.clear_cache()
        attention.calls.clear()
        if timer:
            timer.reset()
        _sync(device)
        start = time.perf_counter()
        logits = prefill(model, ids, cfg.use_cache)
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
        bar.update()
    bar.close()
    records = timer.records() if timer else []
    record = {
        "model": cfg.model.name,
        "schedule": HydraConfig.get().runtime.choices.get("schedule") if HydraConfig.initialized() else None,
        "label": label,
        "schedule_layers": schedule.describe(),
        "length": cfg.length,
        "batch": cfg.batch,
        "impl": cfg.impl,
        "causal_backend": cfg.causal_backend,
        "sdpa_backend": cfg.sdpa_backend,
        "use_cache": cfg.use_cache,
        "warmup_length": min(cfg.warmup_length, cfg.length),
        "ttft_ms": statistics.median(times),
        "ttft_ms_runs": times,
        "attention_ms": sum(ms for _, _, ms in records),
        "layers": [{"layer": layer, "path": path, "ms": ms} for layer, path, ms in records],
        "paths": dict(attention.calls),
        "lowerings_per_prefill": schedule.lowerings // max(1, cfg.repeats + 1),
        "estimates_per_prefill": schedule.estimates // max(1, cfg.repeats + 1),
        "logits_finite": bool(torch.isfinite(logits).all()),
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "weights_gib": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30,
        **environment(device),
    }
    return record


def attention_label(cfg: DictConfig, schedule: LayerSchedule) -> str:
    """The schedule's name, marked where causal layers run through our kernel instead of SDPA."""
    name = (
        HydraConfig.get().runtime.choices.get("schedule", "?") if HydraConfig.initialized() else cfg.get("label", "?")
    )
    causal = any(schedule.is_causal(i) for i in range(schedule.num_layers or 0))
    return f"{name}[kernel]" if cfg.causal_backend == "sparse" and causal else name


def environment(device: torch.device) -> dict:
    import torch
    import transformers
    import triton

    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else sys.argv[1:]
    return {
        "command": "python experiments/ttft.py " + " ".join(overrides),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "triton": triton.__version__,
            "transformers": transformers.__version__,
            "cuda": torch.version.cuda,
        },
    }


@hydra.main(version_base=None, config_path="../conf", config_name="ttft")
def main(cfg: DictConfig) -> None:
    record = run_ttft(cfg)
    out = Path(cfg.out_dir) / "ttft.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    memory = f", peak {record['peak_memory_gib']:.1f} GiB" if record["peak_memory_gib"] is not None else ""
    print(
        f"{record['model']} {record['label']} {record['length']}: TTFT {record['ttft_ms']:.1f} ms, "
        f"attention {record['attention_ms']:.1f} ms{memory}, paths {record['paths']} -> {out.resolve()}",
        flush=True,
    )


if __name__ == "__main__":
    main()
