"""Every file under conf/ that this test owns is composed and instantiated, so none can rot; the TTFT app
runs end to end on the CPU through Hydra's basic launcher (and joblib's, when installed), and the report
gathers its outputs.

The SmolLM2 model config loads real weights (seconds to dequantise): it is instantiated once, in
tests/test_integration_hf.py::test_smollm2_gguf_prefills_with_a_schedule, and only composed here.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from experiment_apps import load_app
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from sparseattn import Pattern
from sparseattn.schedule import LayerSchedule, is_dynamic

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
SCHEDULES = sorted(p.stem for p in (CONF / "schedule").glob("*.yaml"))
PATTERNS = sorted(p.stem for p in (CONF / "pattern").glob("*.yaml"))
LOADS_REAL_WEIGHTS = {"smollm2", "qwen25_coder_05b"}
PRESETS = {
    "trianglemix_llama31_8b": "llama31_8b",
    "trianglemix_qwen25_7b": "qwen25_7b",
    "minference_llama31_8b": "llama31_8b",
}  # schedule -> its model


def ttft_config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name="ttft", overrides=list(overrides))


@pytest.mark.parametrize("name", PATTERNS)
def test_pattern_configs_instantiate(name):
    cfg = ttft_config(f"pattern={name}")
    pattern = instantiate(cfg.pattern)
    assert isinstance(pattern, Pattern) or is_dynamic(pattern)


@pytest.mark.parametrize(
    ("name", "model"),
    [(s, m) for s in SCHEDULES for m in ("llama31_8b", "qwen25_7b") if PRESETS.get(s, m) == m],
)
def test_schedule_configs_instantiate_and_bind(name, model):
    cfg = ttft_config(f"schedule={name}", f"model={model}")
    layers, heads = cfg.model.load.config.num_hidden_layers, cfg.model.load.config.num_attention_heads
    schedule = instantiate(cfg.schedule).bind(layers, heads)
    assert isinstance(schedule, LayerSchedule)
    patterns = [schedule.pattern(i) for i in range(layers)]
    if name.startswith("trianglemix") or name in ("streaming", "a_shape"):
        split = cfg.model.trianglemix_from
        assert patterns[split - 1] != patterns[split] and len(set(patterns[split:])) == 1


def test_paper_presets_match_the_generic_trianglemix():
    for model, preset in (("llama31_8b", "trianglemix_llama31_8b"), ("qwen25_7b", "trianglemix_qwen25_7b")):
        cfg = ttft_config(f"model={model}")
        layers = cfg.model.load.config.num_hidden_layers
        generic = instantiate(cfg.schedule).bind(layers)
        explicit = instantiate(ttft_config(f"model={model}", f"schedule={preset}").schedule).bind(layers)
        assert generic.describe() == explicit.describe()
    with pytest.raises(Exception, match=r"rules\[1\]\.layers: 28-31 out of range"):
        instantiate(ttft_config("schedule=trianglemix_llama31_8b").schedule).bind(28)


@pytest.mark.parametrize("name", MODELS)
def test_model_configs_instantiate(name):
    cfg = ttft_config(f"model={name}")
    if name in LOADS_REAL_WEIGHTS:
        assert cfg.model.load._target_ == "sparseattn.integrations.model_loading.gguf_model"
        return
    # The 8B shapes are built on the meta device: the config is fully checked, no memory is used.
    device = "cpu" if name.startswith("tiny") else "meta"
    model = instantiate(cfg.model.load, device=device)
    config = cfg.model.load.config
    assert model.config.num_hidden_layers == config.num_hidden_layers
    assert model.config.num_key_value_heads == config.num_key_value_heads
    assert next(model.parameters()).device.type == device
    assert 0 < cfg.model.trianglemix_from < config.num_hidden_layers


def run_app(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def report(sweep: Path, out: Path) -> None:
    """experiments/report.py's command line, in this process (it imports neither torch nor Hydra: nothing
    a fresh interpreter would check that this one does not)."""
    load_app("report").main([str(sweep), "--out", str(out)])


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_ttft_sweep_and_report_on_cpu(tmp_path, launcher):
    if launcher == "joblib" and importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is None:
        pytest.skip("hydra-joblib-launcher not installed")
    sweep = tmp_path / "sweep"
    extra = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    # Two jobs: a sweep of two schedules is what the launcher and the report's pairing against dense need.
    done = run_app(
        str(ROOT / "experiments/ttft.py"),
        "-m",
        "model=tiny_llama",
        "impl=reference",
        "sdpa_backend=null",
        "schedule=dense,trianglemix",
        "length=160",
        "warmup_length=32",
        "repeats=1",
        f"hydra.sweep.dir={sweep}",
        *extra,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in sweep.rglob("ttft.json")]
    assert len(records) == 2
    mix = next(r for r in records if r["label"] == "trianglemix" and r["length"] == 160)
    assert mix["paths"] == {"dense_prefill": 1, "sparse_prefill": 2} and mix["lowerings_per_prefill"] == 1
    assert [e["layer"] for e in mix["layers"]] == [0, 1, 2] and mix["logits_finite"]
    out = tmp_path / "report" / "ttft_cpu"
    report(sweep, out)
    table = out.with_suffix(".md").read_text()
    assert "| tiny_llama | 160 |" in table and "trianglemix" in table
    assert out.with_suffix(".png").stat().st_size > 0
    assert len(json.loads(out.with_suffix(".json").read_text())) == len(records)


def test_ttft_sweep_through_submitit_local_and_report(tmp_path):
    """Two jobs in processes of their own (submitit's local executor, what SLURM runs), read back by report.py."""
    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        pytest.skip('hydra-submitit-launcher not installed (pip install -e ".[submitit]")')
    sweep = tmp_path / "sweep"
    done = run_app(
        str(ROOT / "experiments/ttft.py"),
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=5",
        "hydra.launcher.gpus_per_node=0",
        "hydra.launcher.cpus_per_task=1",
        "model=tiny_llama",
        "impl=reference",
        "sdpa_backend=null",
        "schedule=dense,trianglemix",
        "length=96",
        "warmup_length=32",
        "repeats=1",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((sweep / ".submitit").rglob("*_result.pkl"))) == 2  # each job ran under submitit
    records = [json.loads(p.read_text()) for p in sweep.rglob("ttft.json")]
    assert sorted(r["label"] for r in records) == ["dense", "trianglemix"]
    out = tmp_path / "report" / "ttft_submitit"
    report(sweep, out)
    assert "| tiny_llama | 96 |" in out.with_suffix(".md").read_text()
    assert len(json.loads(out.with_suffix(".json").read_text())) == 2


def test_slurm_launcher_config_asks_for_one_gpu_per_job(tmp_path):
    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        pytest.skip('hydra-submitit-launcher not installed (pip install -e ".[submitit]")')
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        cfg = compose("ttft", overrides=["hydra/launcher=slurm_gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.mem_gb, launcher.timeout_min) == (1, 1, 64, 60)


def test_the_qwen_finetune_config_keeps_the_protocol_and_swaps_the_model():
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        base = compose("finetune")
        qwen = compose("finetune_qwen05b")
    assert qwen.model.name == "qwen25_coder_05b" and qwen.tokenizer.gguf_path == "qwen"
    assert (qwen.num_layers, qwen.train.length, list(qwen.eval.lengths)) == (24, 8192, [8192, 16384])
    assert qwen.sparse_schedule == base.sparse_schedule and qwen.train.steps == base.train.steps
