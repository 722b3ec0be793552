"""Every import inside kangaroo_trt points down the declared layers (scripts/check_layers.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check_layers.py"
PACKAGE = SCRIPT.parent.parent / "kangaroo_trt"


def _check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_no_import_runs_up_the_layers():
    result = _check("--graph")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "runner       -> " in result.stdout  # the graph was printed, so the package was found and read


def test_an_upward_or_sideways_import_is_reported(tmp_path):
    copy = tmp_path / "kangaroo_trt"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "adapters", "data"))
    spec = copy / "contract" / "spec.py"
    spec.write_text(spec.read_text() + "\n\ndef _late():\n    from ..runner.api import KangarooEngine  # noqa: F401\n")
    (copy / "export" / "validate.py").write_text("from kangaroo_trt.engines import builder  # noqa: F401\n")
    result = _check("--root", str(copy))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any("contract.spec imports kangaroo_trt.runner.api" in line for line in lines), lines
    assert any("export.validate imports kangaroo_trt.engines" in line for line in lines), lines
    assert len(lines) == 2, lines
