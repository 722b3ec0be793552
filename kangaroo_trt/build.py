"""``kangaroo-export build``: target model + adapter -> a complete engine directory, written atomically.

Everything is written into a temporary sibling of ``out`` and renamed into place at the end, so a failure
never leaves a half-written engine directory; what a build never deletes, and how it is fenced against other
builds, is in ``atomic.py``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Callable

import torch

from .bundled import default_adapter, resolve_model
from .config import AdapterSpec, DecodeConfig, ExportConfig, ModelSpec
from .contract.manifest import GRAPHS, GraphEntry, Manifest, sha256
from .contract.spec import graph_specs
from .errors import ConfigError, KangarooError
from .atomic import apply_umask, out_lock, replaceable, swap_in, sweep_stale, temp_dir
from .export.onnx_export import export_graph
from .export.validate import check_parity, reference_error
from .model.weights import (AdapterCheckpoint, build_modules, load_adapter, load_hf_config, random_adapter,
                            save_adapter, weights_digest)
from .paths import writable_dir
from .runner.exactness import export_checks
from .runner.backends import runnable_backends
from .runtimes import import_tensorrt, library_versions

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}  # exported from PyTorch; int8 is calibrated from fp32
# Precisions with no ONNX graphs: ONNX Runtime CPU has no bf16 MatMul kernel ("Could not find an implementation for
# MatMul(13)"), so nothing here could check or run one; the manifest holds their graph specs and the PyTorch
# backends rebuild the modules in that dtype (``backends`` in the manifest says which backends run each precision).
MODULE_ONLY = {"bf16": torch.bfloat16}
ADAPTER_DIR = "adapter"
LIBRARIES = ("kangaroo-trt", "torch", "transformers", "onnx", "onnxruntime")  # recorded in the manifest


def choose_adapter(adapter_path: Path | None, allow_random: bool, model: str) -> AdapterCheckpoint:
    """The adapter asked for; else a random one if explicitly allowed; else the bundled model's shipped one."""
    if adapter_path is not None and allow_random:
        raise ConfigError("give --adapter DIR or --random-adapter, not both")
    if adapter_path is not None:
        return load_adapter(adapter_path)
    if allow_random:
        return random_adapter(AdapterSpec.like(ModelSpec.from_hf_config(load_hf_config(resolve_model(model)))))
    shipped = default_adapter(model)
    if shipped is not None:
        return load_adapter(shipped)
    raise ConfigError(
        "no adapter given: pass --adapter DIR (a trained Kangaroo adapter), or --random-adapter for a randomly "
        "initialised one (correct output, but it will not speed anything up)"
    )


def export_config(adapter: AdapterCheckpoint, exit_layer: int | None = None, gamma: int | None = None,
                  tau: float | None = None, **fields) -> ExportConfig:
    """Export settings for ``adapter``: its exit layer and tuned gamma / tau (``meta["decode"]``) unless given, and
    ``fields`` (max_seq_len, precisions, ...); ``ExportConfig`` / ``DecodeConfig`` defaults for everything else."""
    tuned = {k: v for k, v in adapter.meta.get("decode", {}).items() if k in ("gamma", "tau")}
    given = {k: v for k, v in (("gamma", gamma), ("tau", tau)) if v is not None}
    layer = exit_layer if exit_layer is not None else adapter.exit_layer
    return ExportConfig(decode=DecodeConfig(**{**tuned, **given}), **({"exit_layer": layer} if layer else {}), **fields)


def build_engine_dir(model: str, out: Path, export: ExportConfig, adapter: AdapterCheckpoint | None = None,
                     adapter_path: Path | None = None, allow_random_adapter: bool = False, force: bool = False,
                     log: Callable[[str], None] = print) -> Manifest:
    out = Path(os.path.abspath(out))
    if export.tensorrt == "require":
        import_tensorrt()  # fail now, not after the whole export
    replaceable(out, force)
    writable_dir(out.parent, "--out")
    with out_lock(out):
        sweep_stale(out, log)
        return _build(model, out, export, adapter, adapter_path, allow_random_adapter, force, log)


def _build(model: str, out: Path, export: ExportConfig, adapter: AdapterCheckpoint | None, adapter_path: Path | None,
           allow_random_adapter: bool, force: bool, log: Callable[[str], None]) -> Manifest:
    existed = replaceable(out, force)
    model_dir = resolve_model(model)
    if adapter is None:
        adapter = choose_adapter(adapter_path, allow_random_adapter, model)
    if adapter.meta.get("source") == "random":
        log("warning: random adapter: output is exact, but drafts are noise and nothing will speed up")
    config = load_hf_config(model_dir)
    spec = ModelSpec.from_hf_config(config)
    export.check_fits(spec)
    modules = build_modules(model_dir, adapter, export.exit_layer, verify_rows=export.max_verify)
    log(f"model {model}: {spec.architecture}, {spec.num_layers} layers, exit layer {export.exit_layer}, "
        f"cache {export.max_seq_len} positions")

    tmp = temp_dir(out)
    try:
        eos = _eos_ids(model_dir, spec)
        graphs: dict[str, dict[str, GraphEntry]] = {}
        for precision in (p for p in export.precisions if p in DTYPES):
            graphs[precision] = _export_precision(modules, spec, adapter, export, precision, tmp, log)
        for precision in (p for p in export.precisions if p in MODULE_ONLY):
            graphs[precision] = _module_only(modules, spec, adapter, export, precision, log)
        info: dict = {"adapter": adapter.meta, "versions": library_versions(LIBRARIES), "opset": export.opset}
        if "int8" in export.precisions:
            graphs["int8"], info["int8"] = _int8(modules, spec, adapter, export, graphs.get("fp32"), tmp, model_dir, eos, log)
        graphs = {p: graphs[p] for p in export.precisions}  # manifest order = the order asked for
        onnx_graphs = {p: gs for p, gs in graphs.items() if p not in MODULE_ONLY}
        if export.tensorrt != "off" and onnx_graphs:
            from .engines.builder import build_plans_if_available

            plans = build_plans_if_available(tmp, onnx_graphs, export, log, required=export.tensorrt == "require")
        else:
            plans = None
        # The adapter's own weights, so a backend that rebuilds the modules (runner/torch_backend.py) can.
        save_adapter(modules, tmp / ADAPTER_DIR, meta=adapter.meta)
        has_template = _save_tokenizer(model_dir, tmp / "tokenizer")
        apply_umask(tmp)
        files = {str(p.relative_to(tmp)): sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        # A local directory is recorded absolute (a relative one would resolve against wherever the engine runs).
        source = str(Path(model).resolve()) if Path(model).is_dir() else model
        manifest = Manifest(
            model=spec, adapter=adapter.spec, exit_layer=export.exit_layer, max_seq_len=export.max_seq_len,
            prefill_chunk=export.prefill_chunk, max_verify=export.max_verify, decode=export.decode,
            eos_token_ids=eos, has_chat_template=has_template, graphs=graphs, files=files, source_model=source,
            adapter_dir=ADAPTER_DIR, tensorrt=plans, info=info, source_sha256=weights_digest(Path(model_dir)),
        )
        manifest = dataclasses.replace(manifest, backends={p: runnable_backends(manifest, p) for p in graphs})
        manifest.write(tmp)
        # The losslessness report: exact mode checked bitwise on the backends this machine has (runner/exactness.py).
        manifest = dataclasses.replace(manifest, exactness=export_checks(tmp, manifest, log))
        manifest.write(tmp)
        swap_in(tmp, out, existed, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {out}")
    return manifest


def _export_precision(modules, spec: ModelSpec, adapter: AdapterCheckpoint, export: ExportConfig, precision: str,
                      root: Path, log: Callable[[str], None]) -> dict[str, GraphEntry]:
    """Export the three graphs of one float precision under ``root/onnx/<precision>/`` and check their parity."""
    typed = modules if precision == "fp32" else modules.to_dtype(DTYPES[precision])
    specs = graph_specs(spec, adapter.spec, export, precision)
    entries = {}
    for name in GRAPHS:
        rel = f"onnx/{precision}/{name}.onnx"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        export_graph(typed.graphs()[name], specs[name], root / rel, export.opset, spec.vocab_size)
        parity = check_parity(typed.graphs()[name], specs[name], root / rel, precision, spec.vocab_size,
                              exact=None if precision == "fp32" else modules.graphs()[name])
        log(f"exported {rel}: {parity.summary()}")
        entries[name] = GraphEntry(rel, specs[name], parity.max_abs_error)
    return entries


def _module_only(modules, spec: ModelSpec, adapter: AdapterCheckpoint, export: ExportConfig, precision: str,
                 log: Callable[[str], None]) -> dict[str, GraphEntry]:
    """Graph entries without ONNX files for a precision only the PyTorch backends run: the I/O contract, and how far
    the modules in that dtype are from fp32 on the parity check's feeds (``reference_error``)."""
    typed = modules.to_dtype(MODULE_ONLY[precision])
    specs, feeds = graph_specs(spec, adapter.spec, export, precision), graph_specs(spec, adapter.spec, export, "fp32")
    entries = {}
    for name in GRAPHS:
        errors = reference_error(typed.graphs()[name], modules.graphs()[name], feeds[name], precision, spec.vocab_size)
        worst = max(errors.items(), key=lambda kv: kv[1])
        log(f"{name}/{precision}: no ONNX graph (PyTorch backends only); max |torch {precision} - fp32| = "
            f"{worst[1]:.2e} ({worst[0].split(':')[0]})")
        entries[name] = GraphEntry(None, specs[name], errors)
    return entries


def _int8(modules, spec: ModelSpec, adapter: AdapterCheckpoint, export: ExportConfig,
          fp32: dict[str, GraphEntry] | None, tmp: Path, model_dir: Path, eos: tuple[int, ...],
          log: Callable[[str], None]) -> tuple[dict[str, GraphEntry], dict]:
    """INT8 Q/DQ graphs calibrated from the fp32 ones (exported to a scratch folder if fp32 was not asked for).

    An int8 entry's ``parity`` holds its teacher-forced top-1 agreement with fp32 (see ``calib.quality``)
    instead of an error bound: INT8 is judged by that and by Kangaroo == AR on itself, both in ``info["int8"]``.
    """
    from .calib import build_int8

    scratch = tmp / ".fp32-for-int8"
    if fp32 is None:
        fp32 = _export_precision(modules, spec, adapter, export, "fp32", scratch, log)
        base = scratch
    else:
        base = tmp
    try:
        result = build_int8({g: (base / e.file, e.spec) for g, e in fp32.items()}, tmp / "onnx" / "int8",
                            _tokenizer(model_dir), eos, export.prefill_chunk, modules=modules, opset=export.opset, log=log)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    specs = graph_specs(spec, adapter.spec, export, "int8")
    agreement = result.report["agreement"]
    entries = {g: GraphEntry(f"onnx/int8/{g}.onnx", specs[g], {"top1_agreement": agreement[g]}) for g in GRAPHS}
    return entries, {"report": "onnx/int8/quality.json", **result.report}


def _eos_ids(model_dir: Path, spec: ModelSpec) -> tuple[int, ...]:
    """EOS ids from the config, the generation config and the tokenizer, in that order, deduplicated."""
    ids = list(spec.eos_token_ids)
    try:
        from transformers import GenerationConfig

        gen = GenerationConfig.from_pretrained(model_dir, local_files_only=True)
        extra = gen.eos_token_id
        ids += list(extra) if isinstance(extra, (list, tuple)) else ([extra] if extra is not None else [])
    except OSError:
        pass  # no generation_config.json: the model config's eos ids stand
    tok = _tokenizer(model_dir)
    if tok.eos_token_id is not None:
        ids.append(tok.eos_token_id)
    if not ids:
        raise KangarooError(f"{model_dir} declares no EOS token: set eos_token_id in its config.json")
    if outside := [i for i in ids if not 0 <= int(i) < spec.vocab_size]:
        raise ConfigError(f"{model_dir} declares EOS token ids {outside} outside its vocabulary of {spec.vocab_size} "
                          "(config.json, generation_config.json or the tokenizer): fix eos_token_id there")
    return tuple(dict.fromkeys(int(i) for i in ids))


def _tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except Exception as err:  # transformers and tokenizers fail with OSError, ValueError, KeyError, ... on bad files
        raise ConfigError(f"cannot load the tokenizer of {model_dir} ({type(err).__name__}: {' '.join(str(err).split())[:200]}): "
                          "the model directory needs its tokenizer files (tokenizer.json, tokenizer_config.json)") from err


def _save_tokenizer(model_dir: Path, out: Path) -> bool:
    tok = _tokenizer(model_dir)
    tok.save_pretrained(out)
    return bool(tok.chat_template)
