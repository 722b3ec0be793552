"""Check that every import inside kangaroo_trt points down the declared layers (or stays inside its own unit).

A unit is a subpackage (``runner``, ``contract``, ...) or a top-level module (``config``, ``build``, ...); the
package's ``__init__`` is the unit ``kangaroo_trt``. Lazy imports inside functions count like any other.

    python scripts/check_layers.py            # exit 1 and one line per violation if an import runs up or sideways
    python scripts/check_layers.py --graph    # print which units each unit imports
    python scripts/check_layers.py --root OTHER/kangaroo_trt   # check another checkout
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "kangaroo_trt"
# Lowest first. A unit may import units of lower layers only (never one of its own layer but another unit).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors",),
    # typed settings, shipped data, lazy runtime imports, tables, the chat encoding, user text and output paths
    ("config", "bundled", "runtimes", "markdown", "chat", "textio", "paths", "interrupts"),
    ("contract",),  # the engine directory's contract: graph specs, manifest, TensorRT profiles and plan records
    ("model", "atomic"),  # the export-shaped PyTorch model | locked, fenced, atomic writes of engine directories
    ("export", "engines", "runner"),  # ONNX export + parity | TensorRT plans | backends + decoding loop + API
    ("calib",),  # INT8 calibration (exports graphs, decodes with the runner)
    ("build",),  # builds an engine directory: export, calibration, TensorRT plans, manifest
    ("bench", "train", "serve"),  # Spec-Bench benchmark | adapter training and tuning | OpenAI-compatible HTTP server
    ("cli",),  # command-line entry points
    (PACKAGE,),  # the package's __init__: the public API
)
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, module: str) -> set[str]:
    """Every kangaroo_trt module ``path`` imports (absolute or relative, at any depth)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
            target = ".".join(p for p in (base, node.module) if p)
            # ``from . import x`` / ``from .. import x`` name modules: count each one
            found |= {f"{target}.{a.name}" for a in node.names} if node.module is None else {target}
    return {name for name in found if name == PACKAGE or name.startswith(PACKAGE + ".")}


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else PACKAGE


def check(root: Path) -> tuple[list[str], dict[str, set[str]]]:
    """(violations, unit -> units it imports)."""
    problems, graph = [], {}
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        source = unit(module)
        if source not in RANK:
            problems.append(f"{path}: unit {source!r} is in no layer: add it to LAYERS in scripts/check_layers.py")
            continue
        for target in sorted(imports(path, module)):
            dest = unit(target)
            if dest == source:
                continue
            graph.setdefault(source, set()).add(dest)
            if dest not in RANK:
                problems.append(f"{path}: imports {target}, whose unit {dest!r} is in no layer")
            elif RANK[dest] >= RANK[source]:
                problems.append(f"{path}: {module} imports {target} ({source} may not import {dest}: "
                                f"layer {RANK[source]} -> {RANK[dest]})")
    return problems, graph


def main(argv: list[str]) -> int:
    root = Path(argv[argv.index("--root") + 1]) if "--root" in argv else Path(__file__).resolve().parent.parent / PACKAGE
    problems, graph = check(root)
    if "--graph" in argv:
        for source in sorted(graph, key=lambda u: (RANK.get(u, -1), u)):
            print(f"{source:12s} -> {', '.join(sorted(graph[source], key=lambda u: (RANK.get(u, -1), u)))}")
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
