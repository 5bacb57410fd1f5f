"""What every committed result carries: the exact commands, dates, device and library versions.

A run appends its own record to ``<name>_runs.json`` before computing, and only when it has something to
compute, so a resumed run lists every invocation that contributed rows and none that added nothing, and a table re-rendered later still names the commands that produced it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shlex
import sys
from pathlib import Path

import torch


def output_dir(out_dir: str | None) -> Path:
    """An app's output folder: ``out_dir`` when given (``experiments/results`` updates the committed results,
    an explicit choice), else Hydra's fresh run folder (``hydra.run.dir``, outputs/<app>/<time>)."""
    if out_dir:
        return Path(out_dir)
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def cpu_name() -> str:
    """The CPU's model name where Linux says it, else what `platform` knows."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    return cpu


def provenance(threads: int | None = None) -> dict:
    import transformers

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU: {cpu_name()}"
    return {
        "command": portable(" ".join(shlex.quote(a) for a in ["python", *sys.argv])),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device + (f", {threads} threads" if threads else ""),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }


def portable(command: str) -> str:
    """``command`` with the folders the GPU drivers pass in ``$OUT`` and ``$STATE`` written as those names:
    a record says how a result was made, not where."""
    for name in ("STATE", "OUT"):
        value = os.environ.get(name)
        if value and len(value) > 1:
            command = command.replace(value, f"${name}")
    return command


def record_run(path: Path, threads: int | None = None) -> None:
    """Append this invocation's provenance to the JSON list at ``path``."""
    runs = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps([*runs, provenance(threads)], indent=1))


def load_runs(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def markdown_header(title: str, runs: list[dict], notes: str = "") -> str:
    """Title, then one line per run (command, date, device, versions), then ``notes``."""
    text = f"# {title}\n\nProduced by (in order; later runs resume earlier ones):\n\n"
    for run in runs:
        versions = ", ".join(f"{k} {v}" for k, v in run["versions"].items())
        text += f"- `{run['command']}` — {run['date']}, {run['device']}, {versions}\n"
    return text + (f"\n{notes}\n" if notes else "") + "\n"
