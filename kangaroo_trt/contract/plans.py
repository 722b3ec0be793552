"""Where TensorRT plans live in an engine directory, and the rule that a stale plan is never used.

Layout (beside ``onnx/``)::

    trt/<precision>/<graph>.plan      one serialized engine per graph and precision
    trt/timing.cache                  shared by every build in this directory
    trt/build.log                     TensorRT builder messages

The manifest's ``tensorrt.plans[precision][graph]`` (a ``PlanEntry``) holds ``file``, ``onnx`` and ``onnx_sha256``:
the sha256 of the ONNX file the plan was built from. A plan is used only if that digest equals the ONNX
file's digest recorded in the manifest *and* on disk, and the plan file has a recorded digest that matches
(``Manifest.artifact``).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import EngineDirError
from .manifest import Manifest

PLAN_DIR = "trt"
TIMING_CACHE = f"{PLAN_DIR}/timing.cache"
BUILD_LOG = f"{PLAN_DIR}/build.log"


def plan_file(precision: str, graph: str) -> str:
    return f"{PLAN_DIR}/{precision}/{graph}.plan"


def fresh_plan(directory: Path, manifest: Manifest, precision: str, graph: str, verify: bool = True) -> bytes:
    """The serialized plan of ``graph`` at ``precision``, refusing a missing, stale or corrupt one with a rebuild
    hint; read once, its sha256 checked on the bytes returned (``Manifest.artifact_bytes``)."""
    rebuild = f"run kangaroo-export engines --engine-dir {directory} --precision {precision}"
    record = manifest.tensorrt.plans.get(precision, {}).get(graph) if manifest.tensorrt else None
    if record is None:
        raise EngineDirError(f"{directory} has no TensorRT plan for {graph}/{precision}: {rebuild}")
    onnx_rel = manifest.graphs[precision][graph].file
    if record.onnx != onnx_rel or record.onnx_sha256 != manifest.files.get(onnx_rel):
        raise EngineDirError(f"{directory}: {record.file} was built from another {onnx_rel} (stale plan): {rebuild}")
    if verify:
        manifest.artifact(directory, onnx_rel)  # the ONNX file as recorded (record.onnx_sha256 is that digest)
    try:
        return manifest.artifact_bytes(directory, record.file, verify)
    except EngineDirError as err:
        raise EngineDirError(f"{err} ({rebuild})") from err
