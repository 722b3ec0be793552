"""The engine directory's self-description: ``manifest.json`` beside the graphs and the tokenizer.

Layout::

    DIR/manifest.json                       schema version, specs, graph contracts, checksums
    DIR/tokenizer/                          tokenizer files (+ chat template)
    DIR/onnx/<precision>/<graph>.onnx       graph; weights in <graph>.onnx.data beside it

Loaders read the manifest, never file names, and refuse a schema they do not know or a file whose
sha256 differs from the one recorded. Schema 2 made what the backends need typed fields (``source_model``,
``adapter_dir``, ``tensorrt``); schema 1 kept them in ``info`` and is still read. Schema 3 renamed each graph's
``parity_max_abs_error`` to ``parity`` (int8 graphs record top-1 agreement there, not an error); 2 is still read.
Schema 4 lets a precision's graphs have no ONNX file (``file`` null: bf16, which only the PyTorch backends run) and
records ``backends``, which backends can run each precision; 3 is still read (every graph has a file there).

The directory is fenced: every path the manifest names must lie inside it (no absolute paths, no ``..``, no
symbolic link out of it), and every file a loader opens must have a recorded sha256 that matches
(``artifact`` / ``verify_files``): a file on disk the manifest does not list is refused, not trusted. Fields are
type-checked on read, so a hand-edited manifest fails with one line naming the field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from ..config import PRECISIONS, AdapterSpec, DecodeConfig, ModelSpec, check_exit_layer
from ..errors import EngineDirError, KangarooError
from .profiles import Profile
from .spec import GraphSpec

SCHEMA_VERSION = 4  # 4: graphs without an ONNX file, "backends"; 3: a graph's "parity" (1, 2: "parity_max_abs_error")
READABLE_SCHEMAS = (1, 2, 3, 4)
MANIFEST = "manifest.json"
GRAPHS = ("shallow", "adapter", "deep")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class GraphEntry:
    file: str | None  # relative to the engine directory; None: no ONNX graph (the PyTorch backends rebuild the module)
    spec: GraphSpec
    # per output, measured at export (export/validate.py): fp32: max |onnx - torch|; fp16: max |onnx - torch fp32|
    # and "<output>:torch_fp16", the PyTorch fp16 modules' own distance from fp32 (the bound's yardstick);
    # int8: {"top1_agreement": ...} with fp32
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
    source_model: str  # a bundled name, or the absolute path of the local directory --model named
    adapter_dir: str | None  # the adapter's weights, relative (None: an engine directory that predates storing them)
    tensorrt: TensorRTRecord | None  # None until plans are built
    info: dict[str, Any]  # provenance only: adapter meta, library versions, opset, INT8 quality report
    # sha256 over the source model's config and weight files (``model.weights.weights_digest``): a backend that
    # rebuilds the modules from ``source_model`` refuses other weights. None: built before it was recorded.
    source_sha256: str | None = None
    # The losslessness report (``runner/exactness.py``, run at export on the backends present): precision ->
    # backend -> its kangaroo-check result in exact mode. None: built before exact mode (its graphs concatenate
    # attention scores, so no row count makes them exact).
    exactness: dict[str, dict[str, dict[str, Any]]] | None = None
    # precision -> the backends that can run it (runner/backends.py ``runnable_backends``, written at export).
    # None: an engine directory that predates it; the runner works it out from the graphs then.
    backends: dict[str, tuple[str, ...]] | None = None

    def digest(self) -> str:
        """sha256 of this manifest's content (the one loaded, whatever the directory holds now)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def exact_check(self, backend: str, precision: str) -> dict[str, Any] | None:
        """The export's exactness check of ``backend`` at ``precision``, if it ran there."""
        return (self.exactness or {}).get(precision, {}).get(backend)

    @property
    def precisions(self) -> list[str]:
        return list(self.graphs)

    def has_onnx(self, precision: str) -> bool:
        """Whether ``precision``'s graphs are ONNX files (bf16's are not: only the PyTorch backends run it)."""
        return all(e.file is not None for e in self.graphs[precision].values())

    @property
    def onnx_precisions(self) -> list[str]:
        return [p for p in self.graphs if self.has_onnx(p)]

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
            "source_sha256": self.source_sha256,
            "adapter_dir": self.adapter_dir,
            "backends": {p: list(b) for p, b in self.backends.items()} if self.backends is not None else None,
            "tensorrt": self.tensorrt.to_dict() if self.tensorrt else None,
            "info": self.info,
            "exactness": self.exactness,
        }

    def write(self, directory: Path) -> None:
        (directory / MANIFEST).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def read(cls, directory: Path) -> "Manifest":
        directory = Path(directory)
        if not directory.exists():
            raise EngineDirError(f"engine directory {directory} does not exist: build one with kangaroo-export build --out {directory}")
        if not directory.is_dir():
            raise EngineDirError(f"engine directory {directory} is not a directory: pass the directory kangaroo-export build wrote")
        path = directory / MANIFEST
        if not path.is_file():
            raise EngineDirError(f"{directory} has no {MANIFEST}: it is not an engine directory (build one with kangaroo-export build)")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
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
            _check_types(d)
            tensorrt = d["tensorrt"]
            manifest = cls(
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
                source_sha256=d.get("source_sha256"),
                exactness=d.get("exactness"),
                backends={p: tuple(b) for p, b in d["backends"].items()} if d.get("backends") is not None else None,
            )
            manifest._check_consistent()
        except KangarooError as err:
            raise EngineDirError(f"{path}: {err}: rebuild the engine directory") from err
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError) as err:
            raise EngineDirError(f"{path} is missing or has a malformed field ({type(err).__name__}: {err}): "
                                 "rebuild the engine directory") from err
        return manifest

    def _check_consistent(self) -> None:
        """What the types cannot say: graph sets, cache sizes, exit layer, and that every named path stays inside."""
        check_exit_layer(self.model, self.exit_layer)
        if any(i >= self.model.vocab_size for i in self.eos_token_ids):
            raise EngineDirError(f"eos_token_ids {list(self.eos_token_ids)} must be token ids below the vocabulary size "
                                 f"{self.model.vocab_size}")
        for precision, graphs in self.graphs.items():
            if precision not in PRECISIONS or set(graphs) != set(GRAPHS):
                raise EngineDirError(f"graphs must map a precision ({', '.join(PRECISIONS)}) to the graphs "
                                     f"{', '.join(GRAPHS)}, got {precision!r}: {sorted(graphs)}")
            if len({e.file is None for e in graphs.values()}) > 1:
                raise EngineDirError(f"the {precision} graphs must all have an ONNX file or none")
            for entry in graphs.values():
                if entry.file is not None:
                    fenced(entry.file)
                if not entry.spec.caches or any(c.shape[2] != self.max_seq_len for c in entry.spec.caches):
                    raise EngineDirError(f"graph {entry.file} must declare caches of max_seq_len {self.max_seq_len} positions")
        if not self.graphs:
            raise EngineDirError("the manifest lists no graphs")
        if self.backends is not None and set(self.backends) != set(self.graphs):
            raise EngineDirError(f"backends must name the backends of each precision ({', '.join(self.graphs)}), "
                                 f"got {sorted(self.backends)}")
        for rel, digest in self.files.items():
            fenced(rel)
            if not _SHA256.fullmatch(digest):
                raise EngineDirError(f"files[{rel!r}] is not a sha256 digest")
        for rel in (self.adapter_dir, *self._plan_paths()):
            if rel is not None:
                fenced(rel)

    def _plan_paths(self) -> list[str]:
        if self.tensorrt is None:
            return []
        t = self.tensorrt
        return [t.timing_cache, t.build_log, *(p for gs in t.plans.values() for e in gs.values() for p in (e.file, e.onnx))]

    def artifact(self, directory: Path, rel: str, verify: bool = True) -> Path:
        """The file ``rel`` names, inside ``directory``; with ``verify``, it must have a recorded sha256 that matches.

        The one check every loader goes through before it opens a file of an engine directory.
        """
        path = inside(directory, rel)
        if not path.is_file():
            raise EngineDirError(f"{directory}: {rel} is missing: the engine directory is incomplete, rebuild it")
        if verify:
            self._check_digest(directory, rel, lambda: sha256(path))
        return path

    def artifact_bytes(self, directory: Path, rel: str, verify: bool = True) -> bytes:
        """The contents of the file ``rel`` names, read once: with ``verify``, the sha256 is checked on these bytes
        (what a loader that takes bytes, such as TensorRT's, then uses: no second read in between)."""
        data = self.artifact(directory, rel, verify=False).read_bytes()
        if verify:
            self._check_digest(directory, rel, lambda: hashlib.sha256(data).hexdigest())
        return data

    def _check_digest(self, directory: Path, rel: str, digest_of: Callable[[], str]) -> None:
        digest = self.files.get(rel)
        if digest is None:
            raise EngineDirError(f"{directory}: {rel} has no recorded sha256 in {MANIFEST}: the file is not part of "
                                 "the engine directory as built, rebuild it")
        if digest_of() != digest:
            raise EngineDirError(f"{directory}: {rel} does not match its recorded sha256: the file is corrupt or was changed, rebuild it")

    def verify_files(self, directory: Path, prefixes: tuple[str, ...] = ("",)) -> None:
        """Check every file under the given relative prefixes: the recorded ones exist and match, and no file on disk
        there is unrecorded (libraries open files beside the ones named, e.g. an ONNX graph's external weights)."""
        directory = Path(directory)
        names = {rel for rel in self.files if rel.startswith(prefixes)}
        for prefix in prefixes:
            top = inside(directory, prefix or ".")
            if top.is_dir():
                names |= {p.relative_to(directory).as_posix() for p in top.rglob("*") if p.is_file() or p.is_symlink()}
        names.discard(MANIFEST)
        for rel in sorted(names):
            self.artifact(directory, rel)


def fenced(rel: str) -> str:
    """A path as the manifest names it: relative, without ``..`` (a lexical check; ``inside`` also resolves links)."""
    if not isinstance(rel, str) or not rel:
        raise EngineDirError(f"path {rel!r} must be a non-empty string")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or Path(rel).is_absolute() or ".." in pure.parts or "\\" in rel:
        raise EngineDirError(f"path {rel!r} points outside the engine directory (absolute or with ..)")
    return rel


def inside(directory: Path, rel: str) -> Path:
    """``directory / rel`` if it resolves (symbolic links followed) inside ``directory``; EngineDirError otherwise."""
    fenced(rel)
    root = Path(directory).resolve()
    path = (root / rel).resolve()
    if path != root and root not in path.parents:
        raise EngineDirError(f"{directory}: {rel} points outside the engine directory (to {path}): rebuild it")
    return Path(directory) / rel


_TYPES = {"exit_layer": int, "max_seq_len": int, "prefill_chunk": int, "max_verify": int, "eos_token_ids": list,
          "tokenizer": dict, "graphs": dict, "files": dict, "source_model": str, "decode_defaults": dict,
          "model": dict, "adapter": dict}


def _check_types(d: dict) -> None:
    """Top-level field types (a JSON string where a number belongs is refused, not coerced)."""
    for name, kind in _TYPES.items():
        value = d.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise EngineDirError(f"field {name!r} must be {kind.__name__}, got {value!r}"[:300])
        if kind is int and value < 1:
            raise EngineDirError(f"field {name!r} must be >= 1, got {value!r}")
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in d["eos_token_ids"]):
        raise EngineDirError(f"field 'eos_token_ids' must be a list of token ids, got {d['eos_token_ids']!r}")
    if not isinstance(d["tokenizer"].get("chat_template"), bool):
        raise EngineDirError("field 'tokenizer.chat_template' must be true or false")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in d["files"].items()):
        raise EngineDirError("field 'files' must map relative paths to sha256 digests")
    for name in ("adapter_dir", "source_sha256"):
        if d.get(name) is not None and not isinstance(d[name], str):
            raise EngineDirError(f"field {name!r} must be a string or null, got {d[name]!r}")
    backends = d.get("backends")
    if backends is not None and not (isinstance(backends, dict) and all(
            isinstance(v, list) and all(isinstance(b, str) for b in v) for v in backends.values())):
        raise EngineDirError("field 'backends' must map each precision to a list of backend names, or be null")
    if d.get("tensorrt") is not None and not isinstance(d["tensorrt"], dict):
        raise EngineDirError("field 'tensorrt' must be an object or null")
    exactness = d.get("exactness")
    if exactness is not None and not (isinstance(exactness, dict) and all(
            isinstance(b, dict) and all(isinstance(r, dict) and isinstance(r.get("ok"), bool) for r in b.values())
            for b in exactness.values())):
        raise EngineDirError("field 'exactness' must map precisions to backends to check reports (with 'ok'), or be null")
