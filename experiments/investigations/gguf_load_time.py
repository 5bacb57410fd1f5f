"""How long does loading a GGUF model take, dequantised by transformers and from the converted-weights cache?

    PYTHONPATH=experiments python experiments/investigations/gguf_load_time.py            # SmolLM2, CPU
    PYTHONPATH=experiments python experiments/investigations/gguf_load_time.py --gguf qwen

Each load runs in a fresh cache folder (first: converts and saves; second: reads the entry) and the two
models are checked equal. Writes ``gguf_load_time_<model>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from harness import RESULTS

from sparseattn.eval.provenance import cpu_name, portable
from sparseattn.integrations.converted_weights import CACHE_ENV
from sparseattn.integrations.model_loading import find_gguf, gguf_model


def timed_load(gguf: str | None, dtype: str) -> tuple[float, torch.nn.Module]:
    start = time.perf_counter()
    model = gguf_model(gguf, dtype=dtype, device="cpu")
    return time.perf_counter() - start, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", default=None, help="gguf_model's path argument (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    file = find_gguf(args.gguf)
    with tempfile.TemporaryDirectory() as cache:
        os.environ[CACHE_ENV] = cache
        converted_s, converted = timed_load(args.gguf, args.dtype)
        cached_s, cached = timed_load(args.gguf, args.dtype)
        first, second = converted.state_dict(), cached.state_dict()
        equal = first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
        entry_mb = sum(p.stat().st_size for p in Path(cache).rglob("*") if p.is_file()) / 2**20
    record = {
        "command": portable(
            " ".join(["PYTHONPATH=experiments python experiments/investigations/gguf_load_time.py", *sys.argv[1:]])
        ),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": f"CPU: {cpu_name()}",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "file": file.name,
        "dtype": args.dtype,
        "dequantised_s": converted_s,
        "cached_s": cached_s,
        "cache_entry_mib": entry_mb,
        "equal": equal,
    }
    stem = f"gguf_load_time_{file.stem.split('.')[0].lower()}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(record, indent=2))
    text = (
        "# Loading a GGUF model: dequantised by transformers, then from the converted-weights cache\n\n"
        f"`{record['command']}` — {record['date']}, {record['device']}, {record['threads']} threads, "
        f"torch {record['torch']}.\n\n"
        "| file | dtype | dequantised (first load) | from the cache | cache entry | same weights |\n"
        "|---|---|---|---|---|---|\n"
        f"| {file.name} | {args.dtype} | {converted_s:.1f} s | {cached_s:.2f} s | {entry_mb:.0f} MiB | {equal} |\n"
    )
    (args.out / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
