"""The engine directory's self-description: ``manifest.json`` beside the graphs and the tokenizer.

Layout::

    DIR/manifest.json                       schema version, specs, graph contracts, checksums
    DIR/tokenizer/                          tokenizer files (+ chat template)
    DIR/onnx/<precision>/<graph>.onnx       graph; weights in <graph>.onnx.data beside it

Loaders read the manifest, never file names, and refuse a schema they do not know or a file whose
sha256 differs from the one recorded. Schema 2 made what the backends need typed fields (``source_model``,
``adapter_dir``, ``tensorrt``); schema 1 kept them in ``info`` and is still read. Schema 3 renamed each graph's
``parity_max_abs_error`` to ``parity`` (int8 graphs record top-1 agreement there, not an error); 2 is still read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import AdapterSpec, DecodeConfig, ModelSpec
from ..errors import EngineDirError
from .profiles import Profile
from .spec import GraphSpec

SCHEMA_VERSION = 3  # 3: a graph's "parity" (schema 1 and 2 wrote it as "parity_max_abs_error", also for int8)
READABLE_SCHEMAS = (1, 2, 3)
MANIFEST = "manifest.json"
GRAPHS = ("shallow", "adapter", "deep")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class GraphEntry:
    file: str  # relative to the engine directory
    spec: GraphSpec
    # fp32 / fp16: max |onnx - torch| per float output, measured at export; int8: {"top1_agreement": ...} with fp32
    parity: dict[str, float]


@dataclass(frozen=True)
class PlanEntry:
    file: str  # trt/<precision>/<graph>.plan
    onnx: str  # the ONNX file it was built from
    onnx_sha256: str  # that file's sha256 when the plan was built: a different one makes the plan stale


@dataclass(frozen=True)
class TensorRTRecord:
    """The TensorRT plans of an engine directory and what they are tied to (``engines/builder.py`` writes it)."""

    versions: dict[str, str]  # tensorrt, cuda, gpu, compute_capability at build time
    profiles: tuple[Profile, ...]  # in the plans' profile order
    workspace_bytes: int
    timing_cache: str
    build_log: str
    plans: dict[str, dict[str, PlanEntry]]  # precision -> graph name -> plan

    def to_dict(self) -> dict[str, Any]:
        return {"versions": self.versions, "profiles": [p.to_dict() for p in self.profiles],
                "workspace_bytes": self.workspace_bytes, "timing_cache": self.timing_cache, "build_log": self.build_log,
                "plans": {p: {g: dataclasses.asdict(e) for g, e in gs.items()} for p, gs in self.plans.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TensorRTRecord":
        return cls(versions=d["versions"], profiles=tuple(Profile(p["name"], *p["n"]) for p in d["profiles"]),
                   workspace_bytes=d["workspace_bytes"], timing_cache=d["timing_cache"], build_log=d["build_log"],
                   plans={p: {g: PlanEntry(**e) for g, e in gs.items()} for p, gs in d["plans"].items()})


@dataclass(frozen=True)
class Manifest:
    model: ModelSpec
    adapter: AdapterSpec
    exit_layer: int
    max_seq_len: int
    prefill_chunk: int
    max_verify: int
    decode: DecodeConfig
    eos_token_ids: tuple[int, ...]
    has_chat_template: bool
    graphs: dict[str, dict[str, GraphEntry]]  # precision -> graph name -> entry
    files: dict[str, str]  # relative path -> sha256
    source_model: str  # what --model named: a bundled name or a local directory (the PyTorch backend rebuilds from it)
    adapter_dir: str | None  # the adapter's weights, relative (None: an engine directory that predates storing them)
    tensorrt: TensorRTRecord | None  # None until plans are built
    info: dict[str, Any]  # provenance only: adapter meta, library versions, opset, INT8 quality report

    @property
    def precisions(self) -> list[str]:
        return list(self.graphs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model.to_dict(),
            "adapter": self.adapter.to_dict(),
            "exit_layer": self.exit_layer,
            "max_seq_len": self.max_seq_len,
            "prefill_chunk": self.prefill_chunk,
            "max_verify": self.max_verify,
            "decode_defaults": {"gamma": self.decode.gamma, "tau": self.decode.tau},
            "eos_token_ids": list(self.eos_token_ids),
            "tokenizer": {"dir": "tokenizer", "chat_template": self.has_chat_template},
            "graphs": {p: {g: {"file": e.file, "spec": e.spec.to_dict(), "parity": e.parity}
                           for g, e in gs.items()} for p, gs in self.graphs.items()},
            "files": self.files,
            "source_model": self.source_model,
            "adapter_dir": self.adapter_dir,
            "tensorrt": self.tensorrt.to_dict() if self.tensorrt else None,
            "info": self.info,
        }

    def write(self, directory: Path) -> None:
        (directory / MANIFEST).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def read(cls, directory: Path) -> "Manifest":
        directory = Path(directory)
        if not directory.is_dir():
            raise EngineDirError(f"engine directory {directory} does not exist: build one with kangaroo-export build --out {directory}")
        path = directory / MANIFEST
        if not path.is_file():
            raise EngineDirError(f"{directory} has no {MANIFEST}: it is not an engine directory (build one with kangaroo-export build)")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise EngineDirError(f"{path} is not valid JSON ({err}): rebuild the engine directory") from err
        version = d.get("schema_version") if isinstance(d, dict) else None
        if version not in READABLE_SCHEMAS:
            raise EngineDirError(
                f"{path} has schema version {version!r}, this kangaroo-trt reads versions "
                f"{', '.join(map(str, READABLE_SCHEMAS))}: rebuild the engine directory with this version's kangaroo-export build"
            )
        try:
            if version == 1:  # schema 1 kept the backends' fields in "info"
                info = dict(d.get("info", {}))
                d = {**d, "source_model": info.pop("source_model"), "adapter_dir": info.pop("adapter_dir", None),
                     "tensorrt": info.pop("tensorrt", None), "info": info}
            tensorrt = d["tensorrt"]
            return cls(
                model=ModelSpec.from_dict(d["model"]),
                adapter=AdapterSpec.from_dict(d["adapter"]),
                exit_layer=d["exit_layer"],
                max_seq_len=d["max_seq_len"],
                prefill_chunk=d["prefill_chunk"],
                max_verify=d["max_verify"],
                decode=DecodeConfig(**d["decode_defaults"]),
                eos_token_ids=tuple(d["eos_token_ids"]),
                has_chat_template=d["tokenizer"]["chat_template"],
                graphs={p: {g: GraphEntry(e["file"], GraphSpec.from_dict(e["spec"]), e["parity" if version >= 3 else "parity_max_abs_error"])
                            for g, e in gs.items()} for p, gs in d["graphs"].items()},
                files=d["files"],
                source_model=d["source_model"],
                adapter_dir=d["adapter_dir"],
                tensorrt=TensorRTRecord.from_dict(tensorrt) if tensorrt else None,
                info=d.get("info", {}),
            )
        except (KeyError, TypeError) as err:
            raise EngineDirError(f"{path} is missing or has a malformed field ({err}): rebuild the engine directory") from err

    def verify_files(self, directory: Path, prefixes: tuple[str, ...] = ("",)) -> None:
        """Check the sha256 of every recorded file under the given relative prefixes."""
        for rel, digest in self.files.items():
            if not rel.startswith(prefixes):
                continue
            path = directory / rel
            if not path.is_file():
                raise EngineDirError(f"{directory}: {rel} is missing: the engine directory is incomplete, rebuild it")
            if sha256(path) != digest:
                raise EngineDirError(f"{directory}: {rel} does not match its recorded sha256: the file is corrupt or was changed, rebuild it")
