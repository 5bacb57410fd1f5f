"""How long does TriangleMix's gradient layer selection take per sample, literally and from dO?

`middle_gradients_reference` differentiates gated eager probabilities (the oracle);
`middle_gradients` runs one fused backward and reads ``dL/dA = dO V^T`` in row chunks. Both on the same
prompts of Qwen2.5-Coder-0.5B-Instruct's weights (the long-context model), checked against each other,
then timed (wall time of one call per length, first call excluded as warm-up).

    PYTHONPATH=experiments python experiments/investigations/layer_selection_speed.py            # CPU
    PYTHONPATH=experiments python experiments/investigations/layer_selection_speed.py --device cuda \\
        --lengths 4096 16384 32768 --out $OUT

Writes ``layer_selection_speed_<device>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from harness import RESULTS
from tqdm import tqdm

from sparseattn.eval.layer_selection import middle_gradients
from sparseattn.eval.layer_selection_reference import middle_gradients_reference
from sparseattn.eval.provenance import cpu_name, portable
from sparseattn.integrations.model_loading import gguf_model


def seconds(fn, device: str) -> tuple[float, object]:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--rows-per-chunk", type=int, default=1024)
    parser.add_argument("--gguf", default="qwen", help="gguf_model's path argument (default: the Qwen GGUF)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    model = gguf_model(args.gguf, dtype=dtype, device=args.device)
    vocab = model.config.vocab_size
    chunk = {"rows_per_chunk": args.rows_per_chunk}
    rows = []
    for length in tqdm([args.lengths[0], *args.lengths], desc="lengths"):  # the first is the warm-up
        prompt = torch.randint(0, vocab, (length,), generator=torch.Generator().manual_seed(length)).tolist()
        fast_s, fast = seconds(lambda p=prompt: middle_gradients(model, [p], [13], **chunk), args.device)
        ref_s, ref = seconds(lambda p=prompt: middle_gradients_reference(model, [p], [13], **chunk), args.device)
        scale = float(ref.grad_abs.abs().max())
        rows.append(
            {
                "length": length,
                "fast_s": fast_s,
                "reference_s": ref_s,
                "speedup": ref_s / fast_s,
                "grad_abs_max_rel_diff": float((fast.grad_abs - ref.grad_abs).abs().max()) / scale,
                "same_ranking": bool(torch.equal(fast.per_layer.argsort(), ref.per_layer.argsort())),
            }
        )
    rows = rows[1:]
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU: {cpu_name()}"
    meta = {
        "command": portable(
            " ".join(
                ["PYTHONPATH=experiments python experiments/investigations/layer_selection_speed.py", *sys.argv[1:]]
            )
        ),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dtype": dtype,
        "model": "Qwen2.5-Coder-0.5B-Instruct (GGUF), 24 layers, 14 q / 2 kv heads",
    }
    stem = f"layer_selection_speed_{args.device}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        "# Gradient layer selection: per-sample time, literal (gated eager probabilities) and from dO",
        "",
        f"`{meta['command']}` — {meta['date']}, {device}, {meta['threads']} threads, torch {meta['torch']}, "
        f"{dtype}, {meta['model']}; one random-token prompt per length, wall time of one call.",
        "",
        "| tokens | from dO (s) | literal (s) | speed-up | max |Δ grad_abs| / max grad_abs | same layer ranking |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['length']} | {r['fast_s']:.2f} | {r['reference_s']:.2f} | {r['speedup']:.1f}× | "
            f"{r['grad_abs_max_rel_diff']:.1e} | {r['same_ranking']} |"
            for r in rows
        ),
    ]
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
