"""Where a benchmark ran: machine, CPU, operating system and library versions."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from ..runtimes import library_versions

DISTRIBUTIONS = ("kangaroo-trt", "onnxruntime", "torch", "transformers", "numpy")


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where it exists, else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment() -> dict:
    """A JSON-ready description of this machine and its software."""
    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": library_versions(DISTRIBUTIONS),
    }
