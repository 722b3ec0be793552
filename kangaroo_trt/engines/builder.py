"""ONNX graphs of an engine directory -> one TensorRT plan per graph and precision, on Polygraphy's loaders.

Status: never run (no GPU or TensorRT where this project is developed; the README's backend table says what
has run). Built on Polygraphy (``NetworkFromOnnxPath(strongly_typed=...)``, ``CreateConfig(profiles=...,
memory_pool_limits=..., load_timing_cache=...)``, ``EngineBytesFromNetwork(save_timing_cache=...)``, which
locks the timing cache while it merges into it) rather than the TensorRT builder API by hand. Tested here
without TensorRT: the Polygraphy loader chain we construct (profiles, pools, caches), plan bookkeeping and
staleness, the "what to install" message, and (``tests/test_tensorrt_ops.py``) the exported graphs' operators
against the ONNX parser's table (``onnx_support.py``, a CPU pre-check only).

Networks are strongly typed: the precision comes from the ONNX (fp32, fp16 weights with fp32 norms /
softmax / rotary, or INT8 Q/DQ), so no precision flag is set. Per plan: the ``step`` and ``prefill``
optimization profiles (``contract/profiles.py``), a workspace limit, one timing cache shared by all plans of the
directory (``trt/timing.cache``, reused by later builds on the same GPU), and the builder log
(``trt/build.log``, Polygraphy's log with TensorRT's messages). The manifest's ``tensorrt`` record (``TensorRTRecord``) holds each plan with the sha256 of the ONNX
file it was built from (``contract/plans.py`` refuses a stale plan) and the TensorRT / CUDA / GPU versions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from pathlib import Path
from typing import Callable

from ..config import ExportConfig
from ..contract.manifest import MANIFEST, GraphEntry, Manifest, PlanEntry, TensorRTRecord, sha256
from ..contract.plans import BUILD_LOG, PLAN_DIR, TIMING_CACHE, plan_file
from ..contract.profiles import profiles
from ..contract.spec import GraphSpec
from ..errors import BackendError, ConfigError
from ..atomic import apply_umask, out_lock, sweep_stale, temp_dir
from ..runtimes import TENSORRT_HINT, import_polygraphy_trt, import_tensorrt, tensorrt_available

WORKSPACE_BYTES = 4 << 30


def device_versions() -> dict[str, str]:
    """TensorRT, CUDA runtime and GPU of this machine, as recorded beside the plans (a plan is tied to them)."""
    trt = import_tensorrt()
    out = {"tensorrt": trt.__version__}
    try:
        import torch

        if torch.cuda.is_available():
            out["cuda"] = str(torch.version.cuda)
            out["gpu"] = torch.cuda.get_device_name(0)
            out["compute_capability"] = "%d.%d" % torch.cuda.get_device_capability(0)
    except ImportError:
        pass
    return out


def plan_loader(onnx_path: Path, spec: GraphSpec, export: ExportConfig, timing_cache: Path, pools: dict,
                strongly_typed: bool):
    """Polygraphy's loader chain for one plan, not yet run: parse ``onnx_path`` (strongly typed where the TensorRT
    version needs the flag), the step and prefill profiles, ``pools`` (memory pool -> byte limit), and the
    timing cache loaded from and merged back into ``timing_cache`` (Polygraphy locks the file while it writes).
    Constructing it needs Polygraphy only; calling it (``loader()`` -> plan bytes) needs TensorRT."""
    trt_loaders = import_polygraphy_trt()
    optimization_profiles = []
    for p in profiles(export.max_verify, export.prefill_chunk):
        profile = trt_loaders.Profile()
        for name, (lo, opt, hi) in p.shapes(spec).items():
            profile.add(name, lo, opt, hi)
        optimization_profiles.append(profile)
    config = trt_loaders.CreateConfig(profiles=optimization_profiles, memory_pool_limits=pools,
                                      load_timing_cache=str(timing_cache) if timing_cache.is_file() else None)
    network = trt_loaders.NetworkFromOnnxPath(str(onnx_path), strongly_typed=strongly_typed)
    return trt_loaders.EngineBytesFromNetwork(network, config=config, save_timing_cache=str(timing_cache))


@contextlib.contextmanager
def _build_log(log_file: Path):
    """Polygraphy's and TensorRT's messages (TensorRT INFO and up) go to ``log_file`` (rewritten), not the terminal."""
    from polygraphy.logger import G_LOGGER

    saved = G_LOGGER.use_python_logging_system
    G_LOGGER.log_file, G_LOGGER.use_python_logging_system = str(log_file), True
    try:
        with G_LOGGER.verbosity(G_LOGGER.VERBOSE):
            yield
    finally:
        G_LOGGER.log_file, G_LOGGER.use_python_logging_system = None, saved


def build_plan(onnx_path: Path, entry: GraphEntry, export: ExportConfig, plan_path: Path, timing_cache: Path,
               log_file: Path, workspace: int = WORKSPACE_BYTES) -> None:
    """Build one plan with Polygraphy's TensorRT loaders and write ``plan_path`` (``build_plans`` sends the log to
    ``log_file``)."""
    trt = import_tensorrt()
    from polygraphy.exception import PolygraphyException

    # TensorRT 11 networks are always strongly typed; TensorRT 10 needs the flag for the same behaviour.
    strongly_typed = int(trt.__version__.split(".")[0]) < 11
    loader = plan_loader(onnx_path, entry.spec, export, timing_cache, {trt.MemoryPoolType.WORKSPACE: workspace},
                         strongly_typed)
    try:
        serialized = loader()
    except PolygraphyException as err:  # parser errors, or a build that produced no engine
        raise BackendError(f"TensorRT could not build {onnx_path.name}: {err} (full log: {log_file})") from err
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))


def build_plans(root: Path, graphs: dict[str, dict[str, GraphEntry]], export: ExportConfig,
                log: Callable[[str], None] = print) -> TensorRTRecord:
    """Build every plan of ``graphs`` (precision -> graph -> entry) under ``root``; the manifest's record."""
    (root / PLAN_DIR).mkdir(parents=True, exist_ok=True)
    versions = device_versions()
    plans: dict[str, dict[str, PlanEntry]] = {}
    with _build_log(root / BUILD_LOG):
        for precision, entries in graphs.items():
            plans[precision] = {}
            for name, entry in entries.items():
                rel = plan_file(precision, name)
                build_plan(root / entry.file, entry, export, root / rel, root / TIMING_CACHE, root / BUILD_LOG)
                plans[precision][name] = PlanEntry(rel, entry.file, sha256(root / entry.file))
                log(f"built {rel}")
    return TensorRTRecord(versions, profiles(export.max_verify, export.prefill_chunk), WORKSPACE_BYTES, TIMING_CACHE,
                          BUILD_LOG, plans)


def build_plans_if_available(root: Path, graphs: dict[str, dict[str, GraphEntry]], export: ExportConfig,
                             log: Callable[[str], None] = print, required: bool = False) -> TensorRTRecord | None:
    """Plans where TensorRT imports; else one line saying what to install (an error if ``required``)."""
    if not tensorrt_available():
        if required:
            import_tensorrt()  # raises the one-line install hint
        log(f"note: {TENSORRT_HINT}; wrote the ONNX graphs only (they run on ONNX Runtime)")
        return None
    return build_plans(root, graphs, export, log)


def add_plans(directory: Path, precisions: tuple[str, ...] | None = None, log: Callable[[str], None] = print) -> Manifest:
    """``kangaroo-export engines``: build plans into an existing engine directory and update its manifest.

    Plans are built into a scratch folder and moved into place only when all of them succeeded; the manifest
    is replaced atomically (``os.replace``) afterwards, so a failed build leaves the directory as it was.
    """
    directory = Path(directory)
    manifest = Manifest.read(directory)
    precisions = precisions or tuple(manifest.onnx_precisions)
    missing = [p for p in precisions if p not in manifest.graphs]
    if missing:
        raise ConfigError(f"{directory} has no {', '.join(missing)} graphs (it has {', '.join(manifest.precisions)}): "
                          f"rebuild it with kangaroo-export build --precision {','.join(precisions)}")
    modules_only = [p for p in precisions if not manifest.has_onnx(p)]
    if modules_only or not precisions:
        raise ConfigError(f"{directory}: {', '.join(modules_only) or 'its precisions'} ha{'s' if len(modules_only) == 1 else 've'} "
                          "no ONNX graphs to build TensorRT plans from (only the PyTorch backends run them): "
                          f"pass --precision {','.join(manifest.onnx_precisions) or 'fp32'} (rebuild with it if missing)")
    import_tensorrt()
    with out_lock(directory):  # no export --force swaps the directory away meanwhile
        return _add_plans(directory, manifest, precisions, log)


def _add_plans(directory: Path, manifest: Manifest, precisions: tuple[str, ...], log: Callable[[str], None]) -> Manifest:
    manifest.verify_files(directory, tuple(f"onnx/{p}/" for p in precisions))
    sweep_stale(directory / PLAN_DIR, log)
    scratch = temp_dir(directory / PLAN_DIR)
    try:
        for p in precisions:  # the builder reads the ONNX files where they are: link them into the scratch root
            (scratch / "onnx").mkdir(exist_ok=True)
            (scratch / "onnx" / p).symlink_to((directory / "onnx" / p).resolve(), target_is_directory=True)
        if (directory / TIMING_CACHE).is_file():
            (scratch / PLAN_DIR).mkdir(parents=True, exist_ok=True)
            shutil.copy2(directory / TIMING_CACHE, scratch / TIMING_CACHE)
        record = build_plans(scratch, {p: manifest.graphs[p] for p in precisions}, manifest_export(manifest), log)
        apply_umask(scratch / PLAN_DIR)
        old = manifest.tensorrt.plans if manifest.tensorrt else {}
        record = dataclasses.replace(record, plans={**{p: v for p, v in old.items() if p not in precisions}, **record.plans})
        files = dict(manifest.files)
        for produced in sorted((scratch / PLAN_DIR).rglob("*")):
            if produced.is_file():
                rel = str(produced.relative_to(scratch))
                (directory / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(produced, directory / rel)
                files[rel] = sha256(directory / rel)
        updated = dataclasses.replace(manifest, files=files, tensorrt=record)
        updated.write(scratch)
        os.replace(scratch / MANIFEST, directory / MANIFEST)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log(f"updated {directory / MANIFEST}")
    return updated


def manifest_export(manifest: Manifest) -> ExportConfig:
    """The export settings the profiles need, as recorded in ``manifest``."""
    return ExportConfig(exit_layer=manifest.exit_layer, max_seq_len=manifest.max_seq_len, precisions=tuple(manifest.precisions),
                        prefill_chunk=manifest.prefill_chunk, max_verify=manifest.max_verify, decode=manifest.decode)
