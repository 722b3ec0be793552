"""INT8 calibration: capture real graph inputs from fp32 decoding, write Q/DQ graphs, report their quality.

``build_int8`` is the one entry point the engine-directory build calls.
"""

from .int8 import build_int8

__all__ = ["build_int8"]
