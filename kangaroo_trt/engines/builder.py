"""ONNX graphs of an engine directory -> one TensorRT plan per graph and precision.

UNVERIFIED: written against the TensorRT 11 Python API (and TensorRT 10 with the STRONGLY_TYPED flag) from
its documentation; no machine this project is developed on has a GPU or TensorRT, so no plan has been built
with this code yet. What is tested here without TensorRT: profiles, plan bookkeeping and staleness, the
"what to install" message, and (``tests/test_tensorrt_ops.py``) that every exported graph uses only ops the
TensorRT ONNX parser supports.

Networks are strongly typed: the precision comes from the ONNX (fp32, fp16 weights with fp32 norms /
softmax / rotary, or INT8 Q/DQ), so no precision flag is set. Per plan: the ``step`` and ``prefill``
optimization profiles (``profiles.py``), a workspace limit, one timing cache shared by all plans of the
directory (``trt/timing.cache``, reused by later builds on the same GPU), and the builder log
(``trt/build.log``). The manifest's ``tensorrt`` record (``TensorRTRecord``) holds each plan with the sha256 of the ONNX
file it was built from (``plans.py`` refuses a stale plan) and the TensorRT / CUDA / GPU versions.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Callable

from ..config import ExportConfig
from ..errors import BackendError, ConfigError
from ..contract.manifest import MANIFEST, GraphEntry, Manifest, PlanEntry, TensorRTRecord, sha256
from ..contract.plans import BUILD_LOG, PLAN_DIR, TIMING_CACHE, plan_file
from ..contract.profiles import profiles
from ..export.atomic import apply_umask, out_lock, sweep_stale, temp_dir

INSTALL_HINT = "TensorRT is not installed: pip install tensorrt-cu13 (NVIDIA's index; needs an NVIDIA GPU and driver)"
WORKSPACE_BYTES = 4 << 30


def import_tensorrt():
    """``tensorrt``, or a one-line BackendError saying what to install."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as err:  # OSError: the bindings are there but the libraries are not
        raise BackendError(INSTALL_HINT) from err
    return trt


def tensorrt_available() -> bool:
    try:
        import_tensorrt()
    except BackendError:
        return False
    return True


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


def _logger(trt, log_file: Path):
    class FileLogger(trt.ILogger):
        """TensorRT's builder messages (INFO and up) go to the build log; errors are also kept for the exception."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self._file = open(log_file, "a")

        def log(self, severity, msg) -> None:
            level = int(severity)  # INTERNAL_ERROR 0, ERROR 1, WARNING 2, INFO 3, VERBOSE 4
            if level <= int(trt.ILogger.Severity.INFO):
                self._file.write(f"[{severity.name}] {msg}\n")
            if level <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(msg)

        def close(self) -> None:
            self._file.close()

    return FileLogger()


def build_plan(onnx_path: Path, entry: GraphEntry, export: ExportConfig, plan_path: Path, timing_cache: Path,
               log_file: Path, workspace: int = WORKSPACE_BYTES) -> None:
    """Parse ``onnx_path``, build one plan with the step and prefill profiles, write ``plan_path``."""
    trt = import_tensorrt()
    logger = _logger(trt, log_file)
    try:
        builder = trt.Builder(logger)
        # TensorRT 11 networks are always strongly typed; TensorRT 10 needs the flag for the same behaviour.
        major = int(trt.__version__.split(".")[0])
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if major < 11 else 0
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
            raise BackendError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, False)
        for p in profiles(export.max_verify, export.prefill_chunk):
            profile = builder.create_optimization_profile()
            for name, (lo, opt, hi) in p.shapes(entry.spec).items():
                profile.set_shape(name, lo, opt, hi)
            config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendError(f"TensorRT could not build {onnx_path.name}: {'; '.join(logger.errors[-3:])} "
                               f"(full log: {log_file})")
        plan_path.parent.mkdir(parents=True, exist_ok=True)
        plan_path.write_bytes(bytes(serialized))
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    finally:
        logger.close()


def build_plans(root: Path, graphs: dict[str, dict[str, GraphEntry]], export: ExportConfig,
                log: Callable[[str], None] = print) -> TensorRTRecord:
    """Build every plan of ``graphs`` (precision -> graph -> entry) under ``root``; the manifest's record."""
    (root / PLAN_DIR).mkdir(parents=True, exist_ok=True)
    versions = device_versions()
    plans: dict[str, dict[str, PlanEntry]] = {}
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
        log(f"note: {INSTALL_HINT}; wrote the ONNX graphs only (they run on ONNX Runtime)")
        return None
    return build_plans(root, graphs, export, log)


def add_plans(directory: Path, precisions: tuple[str, ...] | None = None, log: Callable[[str], None] = print) -> Manifest:
    """``kangaroo-export engines``: build plans into an existing engine directory and update its manifest.

    Plans are built into a scratch folder and moved into place only when all of them succeeded; the manifest
    is replaced atomically (``os.replace``) afterwards, so a failed build leaves the directory as it was.
    """
    directory = Path(directory)
    manifest = Manifest.read(directory)
    precisions = precisions or tuple(manifest.precisions)
    missing = [p for p in precisions if p not in manifest.graphs]
    if missing:
        raise ConfigError(f"{directory} has no {', '.join(missing)} graphs (it has {', '.join(manifest.precisions)}): "
                          f"rebuild it with kangaroo-export build --precision {','.join(precisions)}")
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
