"""Loading an app of experiments/ as a module, so tests call its functions in their own process."""

import importlib.util
from pathlib import Path
from types import ModuleType

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def load_app(name: str) -> ModuleType:
    """A fresh module of ``experiments/<name>.py`` (nothing kept from an earlier load)."""
    spec = importlib.util.spec_from_file_location(f"{name}_app", EXPERIMENTS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
