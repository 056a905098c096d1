"""The layering contract between the two packages: controller -> mesh's public names, never the reverse."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import mesh

ROOT = Path(__file__).resolve().parents[2]


def _imports(package: str) -> Iterator[tuple[str, str, list[str]]]:
    """(file, imported module, names) for every import in a package's source."""
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield rel, alias.name, []
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                yield rel, node.module, [a.name for a in node.names]


def test_mesh_never_imports_the_controller() -> None:
    bad = [(f, m) for f, m, _ in _imports("mesh") if m == "controller" or m.startswith("controller.")]
    assert bad == []


def test_controller_uses_only_mesh_public_names() -> None:
    public = set(mesh.__all__)
    seen = 0
    for f, module, names in _imports("controller"):
        if module == "mesh" or module.startswith("mesh."):
            assert module == "mesh", f"{f} imports {module}: only `from mesh import <public name>`"
            assert names, f"{f}: `import mesh` (use `from mesh import <public name>`)"
            assert set(names) <= public, f"{f} imports {sorted(set(names) - public)}, not in mesh.__all__"
            seen += 1
    assert seen >= 5  # the check saw the controller's imports of mesh
