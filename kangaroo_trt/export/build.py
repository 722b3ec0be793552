"""``kangaroo-export build``: target model + adapter -> a complete engine directory, written atomically.

Everything is written into a temporary sibling of ``out`` and renamed into place at the end, so a
failure never leaves a half-written engine directory and never touches an existing one unless
``force`` is given (and even then only if it is an engine directory).
"""

from __future__ import annotations

import importlib.metadata
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch

from ..bundled import default_adapter, resolve_model
from ..config import AdapterSpec, ExportConfig, ModelSpec
from ..errors import ConfigError, KangarooError
from ..model.weights import AdapterCheckpoint, build_modules, load_adapter, load_hf_config, random_adapter
from .manifest import GRAPHS, MANIFEST, GraphEntry, Manifest, sha256
from .onnx_export import export_graph
from .spec import graph_specs
from .validate import check_parity

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("kangaroo-trt", "torch", "transformers", "onnx", "onnxruntime"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def choose_adapter(adapter_path: Path | None, allow_random: bool, model: str) -> AdapterCheckpoint:
    """The adapter asked for; else a random one if explicitly allowed; else the bundled model's shipped one."""
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


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists():
        if not force:
            raise ConfigError(f"{out} already exists: choose another --out or pass --force to replace it")
        if not (out / MANIFEST).is_file():
            raise ConfigError(f"{out} exists and is not an engine directory: refusing to replace it, choose another --out")


def build_engine_dir(model: str, out: Path, export: ExportConfig, adapter: AdapterCheckpoint | None = None,
                     adapter_path: Path | None = None, allow_random_adapter: bool = False, force: bool = False,
                     log: Callable[[str], None] = print) -> Manifest:
    out = Path(out)
    _prepare_out(out, force)
    model_dir = resolve_model(model)
    if adapter is None:
        adapter = choose_adapter(adapter_path, allow_random_adapter, model)
    if adapter.meta.get("source") == "random":
        log("warning: random adapter: output is exact, but drafts are noise and nothing will speed up")
    config = load_hf_config(model_dir)
    spec = ModelSpec.from_hf_config(config)
    export.check_fits(spec)
    modules = build_modules(model_dir, adapter, export.exit_layer)
    log(f"model {model}: {spec.architecture}, {spec.num_layers} layers, exit layer {export.exit_layer}, "
        f"cache {export.max_seq_len} positions")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        graphs: dict[str, dict[str, GraphEntry]] = {}
        for precision in export.precisions:
            typed = modules if precision == "fp32" else modules.to_dtype(DTYPES[precision])
            specs = graph_specs(spec, adapter.spec, export, precision)
            graphs[precision] = {}
            for name in GRAPHS:
                rel = f"onnx/{precision}/{name}.onnx"
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                export_graph(typed.graphs()[name], specs[name], tmp / rel, export.opset, spec.vocab_size)
                parity = check_parity(typed.graphs()[name], specs[name], tmp / rel, precision, spec.vocab_size)
                log(f"exported {rel}: {parity.summary()}")
                graphs[precision][name] = GraphEntry(rel, specs[name], parity.max_abs_error)
        eos = _eos_ids(model_dir, spec)
        has_template = _save_tokenizer(model_dir, tmp / "tokenizer")
        files = {str(p.relative_to(tmp)): sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = Manifest(
            model=spec, adapter=adapter.spec, exit_layer=export.exit_layer, max_seq_len=export.max_seq_len,
            prefill_chunk=export.prefill_chunk, max_verify=export.max_verify, decode=export.decode,
            eos_token_ids=eos, has_chat_template=has_template, graphs=graphs, files=files,
            info={"source_model": model, "adapter": adapter.meta, "versions": _versions(), "opset": export.opset},
        )
        manifest.write(tmp)
        if out.exists():  # --force on an engine directory: swap, then delete the old one
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            out.rename(old / "engine")
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {out}")
    return manifest


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
    return tuple(dict.fromkeys(int(i) for i in ids))


def _tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load the tokenizer of {model_dir} ({err}): the model directory needs its tokenizer files") from err


def _save_tokenizer(model_dir: Path, out: Path) -> bool:
    tok = _tokenizer(model_dir)
    tok.save_pretrained(out)
    return bool(tok.chat_template)
