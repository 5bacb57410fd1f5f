"""Paired accuracy of schedules against dense on RULER-style tasks (Hydra app; config: conf/accuracy.yaml).

Every sample is answered by dense and by each schedule; rows (score, prediction, decode-position
fidelity) are appended to ``<out_dir>/<name>.jsonl`` as they finish, so a stopped run resumes where it
left off when given the same ``out_dir``. At the end — or with ``report_only=true`` — the table (.md,
.json) and plot (.png) are written. ``out_dir`` defaults to a fresh folder, outputs/accuracy/<time>;
updating the committed results is the explicit ``out_dir=experiments/results``. A run appends its
provenance to ``<name>_runs.json`` only when it has samples to evaluate.

    ./run.sh accuracy                                                 # headline: SmolLM2-135M, 4K (~1 h on 2 cores)
    ./run.sh accuracy samples=2 'tasks=[niah_single]' lengths=[1024]  # a try in about a minute
    ./run.sh accuracy out_dir=experiments/results report_only=true    # re-render the committed table
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from sparseattn.eval import report
from sparseattn.eval.paired_eval import done_keys, evaluate_sample
from sparseattn.eval.provenance import load_runs, markdown_header, output_dir, provenance, record_run


@hydra.main(config_path="../conf", config_name="accuracy", version_base="1.3")
def main(cfg: DictConfig) -> None:
    out = output_dir(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / f"{cfg.name}.jsonl"
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()] if rows_path.exists() else []
    if not cfg.report_only:
        rows += run(cfg, out, rows_path, done_keys(rows))
    write_report(cfg, out, rows)


def run(cfg: DictConfig, out: Path, rows_path: Path, done: set[tuple]) -> list[dict]:
    from sparseattn.eval.masked_backend import AttentionSwitch
    from sparseattn.eval.tasks import TaskGenerator
    from sparseattn.integrations.model_loading import load_pretrained as load

    todo = [(t, n, i) for n in cfg.lengths for t in cfg.tasks for i in range(cfg.samples) if (t, n, i) not in done]
    if not todo:
        return []  # nothing to evaluate: no model load, no provenance line
    record_run(out / f"{cfg.name}_runs.json", cfg.threads)
    model, tokenizer = load(cfg.model, cfg.threads)
    schedules = build_schedules(cfg)
    switch = AttentionSwitch(cfg.backend, cfg.impl)
    generator = TaskGenerator(tokenizer, seed=cfg.seed)
    new: list[dict] = []
    with rows_path.open("a") as sink:
        for task, length, index in tqdm(todo, desc="samples", unit="sample"):
            sample = generator.sample(task, length, index)
            got = evaluate_sample(model, tokenizer, sample, schedules, switch)
            for row in got:
                sink.write(json.dumps(row) + "\n")
            sink.flush()
            new += got
    return new


def build_schedules(cfg: DictConfig) -> dict:
    # _convert_="all": the rules are plain lists of dicts, and the patterns inside them must be instantiated too.
    return {name: instantiate(spec, _convert_="all") for name, spec in cfg.schedules.items()}


def write_report(cfg: DictConfig, out: Path, rows: list[dict]) -> None:
    summary = report.summarize(rows, resamples=cfg.bootstrap_resamples, seed=cfg.seed)
    control = []
    if cfg.control:
        # The negative control must lose against the schedule it controls for, on the same samples.
        against = report.summarize(rows, base=cfg.control.against, resamples=cfg.bootstrap_resamples, seed=cfg.seed)
        control = [s for s in against if s["system"] == cfg.control.system]
    runs = load_runs(out / f"{cfg.name}_runs.json")
    config = OmegaConf.to_container(cfg, resolve=True)
    payload = {
        "runs": runs,
        "rendered": provenance(),
        "config": config,
        "summary": summary,
        "negative_control": control,
    }
    (out / f"{cfg.name}.json").write_text(json.dumps(payload, indent=1))
    notes = (
        "Paired: dense and each schedule answer the same seeded samples. Score: RULER string match (%). "
        "Δ = system − dense with a 95% paired bootstrap CI; McNemar: exact test on fully-correct samples. "
        "Fidelity: dense's greedy answer teacher-forced through each system's own cache "
        "(KL(dense‖system) in nats at the first answer token and averaged over answer positions).\n\n"
        "Schedules (layer ranges of the model):\n\n"
        + "\n".join(
            f"- `{name}`: " + s.bind(cfg.num_layers).describe().replace("\n", "; ")
            for name, s in build_schedules(cfg).items()
        )
    )
    text = markdown_header(f"Accuracy: {cfg.name}", runs, notes) + report.markdown_table(summary)
    if control:
        text += f"\n## Negative control: `{cfg.control.system}` paired against `{cfg.control.against}`\n\n"
        text += report.markdown_table(control)
    (out / f"{cfg.name}.md").write_text(text)
    if summary:
        report.plot_accuracy(summary, str(out / f"{cfg.name}.png"), f"{cfg.name}: paired with dense")
    print(text)


if __name__ == "__main__":
    main()
