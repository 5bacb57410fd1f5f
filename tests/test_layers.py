"""The package's layering, read from its own imports: each layer imports only the layers below it, no
module takes part in an import cycle, and importing the package loads no Triton.

The order is written once, in CONTRIBUTING.md ("The architecture in one picture"); `LAYERS` repeats it
so that a change to either shows up here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sparseattn"

# Lowest first. A module belongs to the longest prefix listed.
LAYERS = (
    "sparseattn.memo",
    "sparseattn.patterns",
    "sparseattn.layout",
    "sparseattn.kernels",
    "sparseattn.lowering",
    "sparseattn.attention",
    "sparseattn.estimation",
    "sparseattn.schedule",
    "sparseattn.integrations",
    "sparseattn.eval",
    "sparseattn.testing",
    "sparseattn",
)
# Inside the kernels layer, concerns stack the same way: planning and the lowering and estimation
# kernels know nothing of the attention launches.
KERNEL_LAYERS = (
    "sparseattn.kernels.interpreter",
    "sparseattn.kernels.reference",
    "sparseattn.kernels.planning",
    "sparseattn.kernels.lowering",
    "sparseattn.kernels.estimation",
    "sparseattn.kernels.flex",
    "sparseattn.kernels.attention",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def runtime_imports(path: Path, known: set[str]) -> set[str]:
    """Modules of the package that ``path`` imports when it runs, at module level or inside functions;
    imports under ``if TYPE_CHECKING:`` are annotations only and are left out."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("sparseattn"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sparseattn"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return found


def layer_of(name: str, order: tuple[str, ...]) -> int:
    matches = [i for i, prefix in enumerate(order) if name == prefix or name.startswith(prefix + ".")]
    return max(matches, key=lambda i: len(order[i]))


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: runtime_imports(path, set(found)) - {name} for name, path in found.items()}


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name, LAYERS)


def test_layers_import_only_layers_below():
    upward = []
    for name, imports in graph().items():
        for target in imports:
            if layer_of(target, LAYERS) > layer_of(name, LAYERS):
                upward.append(f"{name} -> {target}")
            both_kernels = name.startswith("sparseattn.kernels.") and target.startswith("sparseattn.kernels.")
            if both_kernels and layer_of(target, KERNEL_LAYERS) > layer_of(name, KERNEL_LAYERS):
                upward.append(f"{name} -> {target}")
    assert not upward, "imports against the layer order (CONTRIBUTING.md):\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    edges = graph()
    # A package's __init__ imports its submodules by design; a submodule importing its own package's
    # __init__ back would close a cycle, and that is what this test looks for.
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_import_loads_no_triton():
    code = (
        "import sys\n"
        "import sparseattn, sparseattn.estimation, sparseattn.schedule, sparseattn.attention, sparseattn.lowering\n"
        "import sparseattn.kernels.attention.config\n"
        "print(sorted(m for m in sys.modules if m == 'triton' or m.startswith('triton.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]", out
