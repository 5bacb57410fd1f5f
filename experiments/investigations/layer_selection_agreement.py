"""Does the layer selection computed from dO pick the layers the literal computation picked on real data?

The committed SmolLM2 selection (``layer_selection_smollm2_4k_gradients.json``) was computed literally,
through gated eager probabilities. This recomputes it on the same held-out samples and targets
(`conf/layer_selection.yaml`) with today's `middle_gradients`, and compares the per-layer statistic and
the layers chosen at each k of the app.

    PYTHONPATH=experiments python experiments/investigations/layer_selection_agreement.py     # CPU, minutes

Writes ``layer_selection_agreement.{json,md}``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
from harness import EXPERIMENTS, RESULTS
from hydra import compose, initialize_config_dir

from sparseattn.eval.layer_selection import select_layers
from sparseattn.eval.provenance import cpu_name, portable
from sparseattn.integrations.model_loading import load_pretrained
from sparseattn.patterns import Triangle


def app() -> object:
    spec = importlib.util.spec_from_file_location("layer_selection_app", EXPERIMENTS / "layer_selection.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--committed", type=Path, default=RESULTS / "layer_selection_smollm2_4k_gradients.json")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--dtype",
        default=None,
        help="the model's dtype (default: the app's, bfloat16, which is slow on CPUs without bf16 units)",
    )
    args = parser.parse_args()
    with initialize_config_dir(config_dir=str(EXPERIMENTS.parent / "conf"), version_base=None):
        cfg = compose("layer_selection", overrides=[f"model.dtype={args.dtype}"] if args.dtype else [])
    committed = json.loads(args.committed.read_text())
    torch.set_num_threads(int(cfg.threads))
    model, tokenizer = load_pretrained(cfg.model, cfg.threads)
    scratch = args.out / "layer_selection_agreement_gradients.json"
    fresh = app().compute_gradients(cfg, Triangle(**cfg.triangle), model, tokenizer, scratch)
    recomputed = json.loads(scratch.read_text())
    scratch.unlink()
    if recomputed["samples"] != committed["samples"]:
        raise RuntimeError("samples: the held-out samples differ from the committed file's; compare like with like")
    old, new = torch.tensor(committed["per_layer"]), torch.tensor(fresh)
    rows = [
        {
            "k": k,
            "literal": select_layers("gradient", k, len(old), old),
            "from_dO": select_layers("gradient", k, len(new), new),
        }
        for k in cfg.k_values
    ]
    for r in rows:
        r["same"] = r["literal"] == r["from_dO"]
    record = {
        "command": portable(
            " ".join(
                ["PYTHONPATH=experiments python experiments/investigations/layer_selection_agreement.py", *sys.argv[1:]]
            )
        ),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": f"CPU: {cpu_name()}",
        "threads": int(cfg.threads),
        "torch": torch.__version__,
        "dtype": str(cfg.model.dtype),
        "committed": {"file": args.committed.name, **committed["provenance"]},
        "max_rel_diff_per_layer": float(((new - old).abs() / old.abs().max()).max()),
        "spearman": spearman(old, new),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "layer_selection_agreement.json").write_text(json.dumps(record, indent=2))
    lines = [
        "# Layer selection from dO against the committed literal selection (SmolLM2-135M, 2K held-out samples)",
        "",
        f"`{record['command']}` — {record['date']}, {record['device']}, {record['threads']} threads, "
        f"torch {record['torch']}, {record['dtype']}; committed file `{args.committed.name}`: `{committed['provenance']['command']}`, "
        f"{committed['provenance']['date']}, {committed['provenance']['device']}.",
        "",
        f"Per-layer statistic: largest difference {record['max_rel_diff_per_layer']:.1e} of the largest value; "
        f"Spearman rank correlation {record['spearman']:.4f}.",
        "",
        "| k | literal (committed) | from dO (today) | same layers |",
        "|---|---|---|---|",
        *(f"| {r['k']} | {r['literal']} | {r['from_dO']} | {r['same']} |" for r in rows),
    ]
    (args.out / "layer_selection_agreement.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
