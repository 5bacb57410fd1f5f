"""Apps write to a fresh folder unless told otherwise, and credit a run in provenance only when it computed."""

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from sparseattn.eval.paired_eval import DENSE
from sparseattn.eval.provenance import output_dir

CONF = Path(__file__).resolve().parents[1] / "conf"

HYDRA_APPS = ["accuracy", "attention_profile", "bench_kernel", "layer_selection", "ttft"]


@pytest.mark.parametrize("app", HYDRA_APPS)
def test_default_output_is_a_fresh_folder_under_outputs(app):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(app, return_hydra_config=True)
    run_dir = OmegaConf.to_container(cfg.hydra.run)["dir"]  # unresolved: ${now:...} outside a run
    assert run_dir.startswith(f"outputs/{app}/${{now:"), run_dir
    assert cfg.out_dir in (None, "."), f"{app}: results must not default to a committed folder"


def test_output_dir_is_the_explicit_folder_when_given(tmp_path):
    assert output_dir(str(tmp_path)) == tmp_path


def _app(monkeypatch, name):
    import importlib
    import sys

    monkeypatch.syspath_prepend(str(CONF.parent / "experiments"))
    sys.modules.pop(name, None)
    return importlib.import_module(name)


def _rows(task, length, samples):
    return [{"task": task, "length": length, "index": i, "system": DENSE} for i in range(samples)]


def test_accuracy_run_with_nothing_to_evaluate_writes_no_provenance(tmp_path, monkeypatch):
    accuracy = _app(monkeypatch, "accuracy")
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("accuracy", overrides=["samples=2", "tasks=[passkey]", "lengths=[1024]"])
    rows = _rows("passkey", 1024, 2)
    done = {(r["task"], r["length"], r["index"]) for r in rows}
    assert accuracy.run(cfg, tmp_path, tmp_path / "rows.jsonl", done) == []
    assert not (tmp_path / f"{cfg.name}_runs.json").exists()


def test_layer_selection_resumed_without_work_writes_no_provenance(tmp_path, monkeypatch):
    layer_selection = _app(monkeypatch, "layer_selection")
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("layer_selection", overrides=["eval.samples=2", "eval.tasks=[passkey]", "eval.length=1024"])
    rows = _rows("passkey", 1024, 2)
    assert layer_selection.pending(cfg, rows[:1]) == [("passkey", 1)]
    assert layer_selection.pending(cfg, rows) == []
    # A resumed folder whose gradients and samples are all there: the report is re-rendered, no model, no record.
    (tmp_path / f"{cfg.name}_gradients.json").write_text(json.dumps({"per_layer": [float(i) for i in range(30)]}))
    (tmp_path / f"{cfg.name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with open_dict(cfg):
        cfg.out_dir = str(tmp_path)
        cfg.k_values = [10]
        cfg.methods = ["deepest"]
    rendered = []
    monkeypatch.setattr(layer_selection, "write_report", lambda *args: rendered.append(args))
    layer_selection.main.__wrapped__(cfg)
    assert rendered and not (tmp_path / f"{cfg.name}_runs.json").exists()
