"""``make lint``: galparam's modules import galparam's own modules at module level only.

Function-level imports of the package's own modules once hid import cycles and up-layer imports
from readers (the layers contract in ``pyproject.toml`` sees every import, deferred or not; this
check keeps a module's dependencies at its top, where a reader looks). Heavy third-party packages
(TensorFlow, Keras, GalSim, JAX, matplotlib, ...) are imported inside the functions that need them,
so that ``import galparam`` and a console script's argument checks stay fast.

    python scripts/check_imports.py [FOLDER]     # exit 1, one line per deferred import, if any
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def deferred_own_imports(path: Path) -> list[str]:
    """``file:line: module`` for each import of galparam inside a function or class body."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []

    def visit(node, inside: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = inside or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            if inside and isinstance(child, ast.Import):
                found.extend(
                    f"{path}:{child.lineno}: {a.name}" for a in child.names if a.name.split(".")[0] == "galparam"
                )
            elif inside and isinstance(child, ast.ImportFrom):
                if child.level or (child.module or "").split(".")[0] == "galparam":
                    found.append(f"{path}:{child.lineno}: {'.' * child.level}{child.module or ''}")
            visit(child, nested)

    visit(tree, False)
    return found


def main(argv=None) -> int:
    folder = Path((argv or sys.argv[1:] or ["galparam"])[0])
    found = [line for path in sorted(folder.rglob("*.py")) for line in deferred_own_imports(path)]
    for line in found:
        print(f"{line}: imported inside a function; import it at the top of the module")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
