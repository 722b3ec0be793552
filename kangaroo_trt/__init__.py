"""kangaroo-trt: Kangaroo self-speculative decoding (double early exiting) on ONNX Runtime and TensorRT."""

from .errors import KangarooError

__all__ = ["KangarooEngine", "KangarooError"]


def __getattr__(name):  # keep `import kangaroo_trt` light: the runtime loads on first use
    if name == "KangarooEngine":
        from .runner.api import KangarooEngine

        return KangarooEngine
    raise AttributeError(name)
