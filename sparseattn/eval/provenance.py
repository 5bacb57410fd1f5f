"""What every committed result carries: the exact command, date, device and library versions."""

from __future__ import annotations

import contextlib
import datetime
import platform
import shlex
import sys

import torch


def provenance(threads: int | None = None) -> dict:
    import transformers

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU: {cpu}"
    return {
        "command": " ".join(shlex.quote(a) for a in [sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device + (f", {threads} threads" if threads else ""),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }


def markdown_header(title: str, info: dict, notes: str = "") -> str:
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    text = f"# {title}\n\n- command: `{info['command']}`\n- date: {info['date']}\n- device: {info['device']}\n"
    text += f"- versions: {versions}\n"
    return text + (f"\n{notes}\n" if notes else "") + "\n"
