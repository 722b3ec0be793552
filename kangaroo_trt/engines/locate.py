"""Find the engine directory, manifest and precision that own a set of graph files.

Backends are opened with ``{graph: (onnx path, GraphSpec)}`` (``runner/backends.py``). Backends that need
more than the ONNX file (TensorRT plans, the PyTorch backend's source model and adapter) look up the
engine directory whose manifest lists exactly these files, rather than guessing from folder names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import EngineDirError
from ..export.manifest import MANIFEST, Manifest
from ..export.spec import GraphSpec


@dataclass(frozen=True)
class EngineRef:
    directory: Path
    manifest: Manifest
    precision: str


def owning_engine(graphs: dict[str, tuple[Path, GraphSpec]]) -> EngineRef:
    paths = {name: Path(path).resolve() for name, (path, _) in graphs.items()}
    first = next(iter(paths.values()))
    for directory in first.parents:
        if not (directory / MANIFEST).is_file():
            continue
        manifest = Manifest.read(directory)
        for precision, entries in manifest.graphs.items():
            if all(name in entries and (directory / entries[name].file).resolve() == p for name, p in paths.items()):
                return EngineRef(directory, manifest, precision)
    raise EngineDirError(f"{first} does not belong to an engine directory (no {MANIFEST} lists it): "
                         "open graphs through KangarooEngine.open(DIR)")
