"""An on-disk cache of GGUF weights as transformers converted them, so a GGUF is dequantised once per machine.

transformers reads a GGUF by dequantising every tensor in Python, tens of seconds on a CPU for a
135M-parameter model, on every load. The converted model, saved once (its config and a safetensors
file), loads in a second or two. Entries are keyed by the file (resolved path, size, mtime), the
dtype and the transformers version (a later version may convert differently); RoPE scaling is not part of
the key because it changes no weight. The cache lives in ``$SPARSEATTN_CACHE`` (default
``~/.cache/sparseattn``); ``SPARSEATTN_CACHE=off`` turns it off.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

CACHE_ENV = "SPARSEATTN_CACHE"


def converted_folder(file: Path, dtype: torch.dtype) -> Path | None:
    """The cache entry for ``file`` loaded as ``dtype`` (it may not exist yet); None when caching is off."""
    import transformers

    root = os.environ.get(CACHE_ENV, str(Path.home() / ".cache" / "sparseattn"))
    if root.lower() == "off":
        return None
    resolved = file.resolve()
    stat = resolved.stat()
    digest = content_digest(str(resolved), stat.st_size, stat.st_mtime_ns)
    return Path(root).expanduser() / "gguf" / f"{entry_prefix(file, dtype, digest)}tf{transformers.__version__}"


def entry_prefix(file: Path, dtype: torch.dtype, digest: str) -> str:
    """The part of an entry's name shared by every transformers version's conversion of one file and dtype."""
    return f"{file.stem}-{str(dtype).removeprefix('torch.')}-{digest}-"


@functools.lru_cache(maxsize=32)
def content_digest(path: str, size: int, mtime_ns: int) -> str:
    """The first 20 hex digits of the file's SHA-256 (0.4 s for a 98 MB GGUF on one CPU core); size and
    mtime are arguments only so that a replaced file is hashed again within one process."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            sha.update(chunk)
    return sha.hexdigest()[:20]


def is_complete(folder: Path | None) -> bool:
    return folder is not None and (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def save_converted(model: Any, folder: Path) -> None:
    """Save ``model`` into ``folder`` atomically: written beside it, then renamed, so a process that loads
    meanwhile (another test worker) sees either nothing or a whole entry."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        # save_pretrained refuses models loaded from a GGUF (transformers marks them quantised), though
        # their weights are plain dequantised tensors: the config and a safetensors file are all it needs.
        from safetensors.torch import save_model

        model.config.save_pretrained(staging)
        save_model(model, str(staging / "model.safetensors"), metadata={"format": "pt"})
        try:
            staging.rename(folder)
        except OSError:  # another process saved the same entry first
            shutil.rmtree(staging, ignore_errors=True)
        remove_other_versions(folder)
    except OSError as error:
        warnings.warn(f"{CACHE_ENV}: could not cache the converted weights in {folder} ({error})", stacklevel=2)


def remove_other_versions(folder: Path) -> None:
    """Delete the entries that convert the same file in the same dtype under another transformers version."""
    prefix = folder.name.rsplit("-tf", 1)[0]
    for sibling in folder.parent.glob(f"{prefix}-tf*"):
        if sibling != folder and sibling.is_dir():
            shutil.rmtree(sibling, ignore_errors=True)
