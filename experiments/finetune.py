"""Sparsity-aware fine-tuning, then paired accuracy of four systems (Hydra app; config: conf/finetune.yaml).

1. Fine-tune: for each of ``runs`` (``sparse``, ``dense``), the model trains on next-token prediction over
   random ``train.length``-token windows of the essays' ``train.split`` half, with attention through
   ``use_schedule(model, <run>_schedule, impl=impl)`` (the Triton forward and backward kernels on CUDA).
   AdamW on fp32 master weights; ``precision=bf16_autocast`` runs matmuls and attention in bf16. Both runs
   draw the same windows in the same order, so they differ only in the attention pattern. Each step's loss
   is appended to ``<name>_loss.jsonl`` as it goes; the model is saved with ``save_pretrained``
   (safetensors, with the tokenizer) to ``<weights_dir>/<run>/``, and a run whose folder holds a model is
   not trained again (the evaluation can be rerun alone).
2. Evaluate: dense (the base model), ``sparse_before`` (base model, sparse schedule), ``sparse_finetuned``
   (the sparse run's model, sparse schedule) and ``dense_finetuned`` (the dense run's model, dense) answer
   the same samples, with haystacks from the held-out ``eval.split`` half; rows are appended to
   ``<name>.jsonl`` (resumable), and the table pairs every system with dense and ``sparse_finetuned`` with
   ``sparse_before`` (paired bootstrap CI, exact McNemar), per task and pooled.

    ./run.sh finetune                                            # GPU: the protocol (experiments/finetune_gpu.sh)
    ./run.sh finetune model=tiny_llama impl=reference precision=fp32 ...   # see tests/test_finetune_app.py
"""

from __future__ import annotations

import functools
import gc
import json
import math
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from sparseattn.eval import report
from sparseattn.eval.provenance import load_runs, markdown_header, output_dir, provenance, record_run

PRECISIONS = ("bf16_autocast", "fp32")
SYSTEMS = {
    "sparse_before": ("base", "sparse"),
    "sparse_finetuned": ("sparse", "sparse"),
    "dense_finetuned": ("dense", None),
}


@hydra.main(config_path="../conf", config_name="finetune", version_base="1.3")
def main(cfg: DictConfig) -> None:
    protocol(cfg, output_dir(cfg.out_dir))


def protocol(cfg: DictConfig, out: Path) -> dict[str, torch.nn.Module]:
    """Fine-tune every run, plot the losses, evaluate; returns the models trained in this call."""
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {cfg.precision!r}")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    out.mkdir(parents=True, exist_ok=True)
    weights = Path(cfg.weights_dir) if cfg.weights_dir else out
    tokenizer = tokenizer_of(cfg.tokenizer.gguf_path)
    record_run(out / f"{cfg.name}_runs.json", cfg.threads)
    trained = {}
    todo = [run for run in cfg.runs if not (weights / run / "config.json").exists()]
    for run in sorted(set(cfg.runs) - set(todo)):
        print(f"{run}: a fine-tuned model is already in {weights / run}; not training again")
    steps = windows(training_ids(tokenizer, cfg.train.split), cfg) if todo else []
    for run in todo:
        trained[run] = finetune(cfg, run, tokenizer, steps, out / f"{cfg.name}_loss.jsonl", weights / run)
    plot_losses(out / f"{cfg.name}_loss.jsonl", out / f"{cfg.name}_loss.png", cfg.name)
    if cfg.eval.enabled:
        evaluate(cfg, out, weights, tokenizer)
    return trained


# ----------------------------------------------------------------------------------------------- training
@functools.lru_cache(maxsize=2)
def tokenizer_of(gguf_path: str | None) -> Any:
    """The GGUF's tokenizer, converted once per process (~13 s for SmolLM2's on the CPU)."""
    from sparseattn.integrations.model_loading import gguf_tokenizer

    return gguf_tokenizer(gguf_path)


def training_ids(tokenizer: Any, split: str) -> torch.Tensor:
    from sparseattn.eval.text_sources import essay_split

    return torch.tensor(tokenizer(essay_split(split), add_special_tokens=False)["input_ids"], dtype=torch.long)


def windows(ids: torch.Tensor, cfg: DictConfig) -> list[torch.Tensor]:
    """The ``[batch, length]`` input of every step, seeded: both runs see the same windows in the same order."""
    length, batch = int(cfg.train.length), int(cfg.train.batch)
    if len(ids) <= length:
        raise ValueError(f"train.length: {length} tokens, but the {cfg.train.split!r} text has only {len(ids)}")
    generator = torch.Generator().manual_seed(int(cfg.train.seed))
    draws = 1 if cfg.train.repeat_batch else int(cfg.train.steps)
    starts = torch.randint(0, len(ids) - length, (draws, batch), generator=generator)
    steps = [torch.stack([ids[s : s + length] for s in row.tolist()]) for row in starts]
    return steps * int(cfg.train.steps) if cfg.train.repeat_batch else steps


def learning_rate(cfg: DictConfig, step: int) -> float:
    """Linear warm-up over ``train.warmup`` steps, then cosine decay to zero at ``train.steps``."""
    peak, warmup, steps = float(cfg.train.lr), int(cfg.train.warmup), int(cfg.train.steps)
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def finetune(
    cfg: DictConfig, run: str, tokenizer: Any, steps: list[torch.Tensor], log: Path, save_to: Path
) -> torch.nn.Module:
    from sparseattn.integrations import use_schedule

    schedule = instantiate(cfg[f"{run}_schedule"], _convert_="all")
    model: Any = instantiate(cfg.model.load)
    model.float()  # fp32 master weights whatever the config loads; autocast gives the bf16 compute
    device = next(model.parameters()).device
    use_schedule(model, schedule, impl=cfg.impl)
    model.config.use_cache = False  # training keeps no KV cache (and checkpointing refuses one)
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=float(cfg.train.lr), weight_decay=float(cfg.train.weight_decay)
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16_autocast")
    # A run trained anew replaces its earlier records, which belong to a model no longer kept.
    kept = [line for line in log.read_text().splitlines() if json.loads(line)["run"] != run] if log.exists() else []
    log.write_text("".join(f"{line}\n" for line in kept))
    start = time.perf_counter()
    with log.open("a") as sink:
        for step, window in enumerate(tqdm(steps, desc=run)):
            lr = learning_rate(cfg, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = window.to(device)
            with autocast:
                loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg.train.grad_clip))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            record = {
                "run": run,
                "step": step,
                "loss": loss.item(),
                "lr": lr,
                "grad_norm": norm.item(),
                "tokens": batch.numel(),
                "seconds": round(time.perf_counter() - start, 3),
            }
            sink.write(json.dumps(record) + "\n")
            sink.flush()
    model.eval()
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_disable()
    model.config.use_cache = True  # the saved model generates with a cache, as the base model does
    save_to.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(save_to)  # safetensors; the attention implementation is set again on load
    tokenizer.save_pretrained(save_to)
    return model


def plot_losses(log: Path, png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    fig, ax = plt.subplots(figsize=(7, 4))
    for run in dict.fromkeys(r["run"] for r in records):
        steps = [r["step"] for r in records if r["run"] == run]
        losses = [r["loss"] for r in records if r["run"] == run]
        line = ax.plot(steps, losses, alpha=0.35, linewidth=0.8)[0]
        # One window per step makes the raw curve noisy; a trailing mean over 10 steps shows the trend.
        smooth = [sum(losses[max(0, i - 9) : i + 1]) / len(losses[max(0, i - 9) : i + 1]) for i in range(len(losses))]
        ax.plot(steps, smooth, color=line.get_color(), label=f"{run} (10-step mean)")
    ax.set(xlabel="step", ylabel="next-token loss (nats)", title=f"{title}: fine-tuning loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------- evaluation
def evaluate(cfg: DictConfig, out: Path, weights: Path, tokenizer: Any) -> None:
    from sparseattn.eval.masked_backend import AttentionSwitch
    from sparseattn.eval.paired_eval import done_keys, evaluate_systems
    from sparseattn.eval.tasks import TaskGenerator
    from sparseattn.integrations.model_loading import load_pretrained

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    rows_path = out / f"{cfg.name}.jsonl"
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()] if rows_path.exists() else []
    done = done_keys(rows)
    todo = [(t, n, i) for n in cfg.eval.lengths for t in cfg.eval.tasks for i in range(cfg.eval.samples)]
    todo = [key for key in todo if key not in done]
    schedules = {"sparse": instantiate(cfg.sparse_schedule, _convert_="all"), None: None}
    if todo:
        models = {"base": instantiate(cfg.model.load, dtype=cfg.eval.dtype).eval()}
        for run in cfg.runs:
            spec = {"hf_path": str(weights / run), "dtype": cfg.eval.dtype, "device": cfg.model.load.device}
            models[run] = load_pretrained(spec)[0]
        systems = {
            name: (models[source], schedules[schedule])
            for name, (source, schedule) in SYSTEMS.items()
            if source in models
        }
        switch = AttentionSwitch(cfg.eval.backend, cfg.impl)
        generator = TaskGenerator(tokenizer, seed=cfg.eval.seed, split=cfg.eval.split)
        with rows_path.open("a") as sink, torch.inference_mode():
            for task, length, index in tqdm(todo, desc="samples", unit="sample"):
                got = evaluate_systems(
                    tokenizer, generator.sample(task, length, index), models["base"], systems, switch
                )
                sink.write("".join(json.dumps(row) + "\n" for row in got))
                sink.flush()
                rows += got
    write_report(cfg, out, rows)


def pooled(rows: list[dict]) -> list[dict]:
    """The rows again as one task, ``all``: a sample is (task, index), so pairs stay pairs."""
    return [{**r, "task": "all", "index": (r["task"], r["index"])} for r in rows]


def write_report(cfg: DictConfig, out: Path, rows: list[dict]) -> None:
    per_task = len(set(cfg.eval.tasks)) > 1
    everything = rows + (pooled(rows) if per_task else [])
    resamples, seed = int(cfg.eval.bootstrap_resamples), int(cfg.eval.seed)
    summary = report.summarize(everything, resamples=resamples, seed=seed)
    against = report.summarize(everything, base="sparse_before", resamples=resamples, seed=seed)
    recovery = [s for s in against if s["system"] == "sparse_finetuned"]
    losses = out / f"{cfg.name}_loss.jsonl"
    records = [json.loads(line) for line in losses.read_text().splitlines()] if losses.exists() else []
    loss_summary = {}
    for run in dict.fromkeys(r["run"] for r in records):
        mine = [r["loss"] for r in records if r["run"] == run]
        head = mine[: max(1, len(mine) // 10)]
        tail = mine[-max(1, len(mine) // 10) :]
        loss_summary[run] = {
            "steps": len(mine),
            "first_tenth": sum(head) / len(head),
            "last_tenth": sum(tail) / len(tail),
        }
    runs = load_runs(out / f"{cfg.name}_runs.json")
    payload = {
        "runs": runs,
        "rendered": provenance(),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "loss": loss_summary,
        "summary": summary,
        "recovery": recovery,
    }
    (out / f"{cfg.name}.json").write_text(json.dumps(payload, indent=1))
    sparse = instantiate(cfg.sparse_schedule, _convert_="all").bind(cfg.num_layers).describe().replace("\n", "; ")
    t = cfg.train
    notes = (
        f"Fine-tuning: {t.steps} steps of {t.batch} x {t.length} tokens from the essays' `{t.split}` half "
        f"(text_sources.essay_split), AdamW lr {t.lr} (warm-up {t.warmup}, cosine), {cfg.precision} "
        f"(fp32 master weights), impl `{cfg.impl}`. Runs: `sparse` through `{sparse}`; `dense` causal.\n\n"
        + "".join(
            f"- `{run}` loss: {v['first_tenth']:.3f} (first tenth of steps) -> {v['last_tenth']:.3f} (last tenth)\n"
            for run, v in loss_summary.items()
        )
        + f"\nEvaluation: haystacks from the essays' `{cfg.eval.split}` half; {cfg.eval.dtype}, backend "
        f"`{cfg.eval.backend}`. Systems: `dense` (base model), `sparse_before` (base model, sparse schedule), "
        "`sparse_finetuned` (sparse run's model, sparse schedule), `dense_finetuned` (dense run's model, dense). "
        "Δ = system − base with a 95% paired bootstrap CI; McNemar: exact test on fully-correct samples; "
        "fidelity always against the base model's dense answer."
    )
    text = markdown_header(f"Sparsity-aware fine-tuning: {cfg.name}", runs, notes)
    text += "## Paired with dense (base model)\n\n" + report.markdown_table(summary)
    if recovery:
        text += "\n## Recovery: `sparse_finetuned` paired with `sparse_before`\n\n" + report.markdown_table(recovery)
    (out / f"{cfg.name}.md").write_text(text)
    if summary:
        report.plot_accuracy(summary, str(out / f"{cfg.name}.png"), f"{cfg.name}: paired with dense")
    print(text)


if __name__ == "__main__":
    main()
