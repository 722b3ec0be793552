"""A Ctrl-C or SIGTERM that Python swallows inside a finalizer still stops the command and its export."""

from __future__ import annotations

import gc
import signal
import subprocess
import sys

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from kangaroo_trt.atomic import swap_in
from kangaroo_trt.cli.common import user_errors
from kangaroo_trt.interrupts import raise_if_interrupted, signals_as_exceptions


class SignalInFinalizer:
    """Delivers ``sig`` while the garbage collector runs ``__del__``: Python prints the handler's exception as
    "ignored" and goes on."""

    def __init__(self, sig: int) -> None:
        self.sig = sig

    def __del__(self) -> None:
        signal.raise_signal(self.sig)


def swallow(sig: int) -> None:
    SignalInFinalizer(sig)  # unreferenced at once: __del__ runs here
    gc.collect()


def test_a_signal_swallowed_in_a_finalizer_is_raised_again(tmp_path):
    with signals_as_exceptions():
        swallow(signal.SIGINT)  # no exception reaches this frame ...
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()  # ... but the signal was recorded
        tmp, out = tmp_path / "tmp", tmp_path / "out"
        tmp.mkdir()
        with pytest.raises(KeyboardInterrupt):
            swap_in(tmp, out, existed=False, force=False)  # an export never puts its output in place after it
        assert not out.exists() and tmp.exists()
    raise_if_interrupted()  # outside the block nothing is pending


def test_a_command_that_swallowed_ctrl_c_exits_130():
    """(SIGTERM takes the same path, then the wrapper kills the process with it: checked in a subprocess by
    test_bad_inputs.py.)"""

    @click.command()
    @user_errors
    def command() -> None:
        swallow(signal.SIGINT)

    result = CliRunner().invoke(command, [])
    assert result.exit_code == 130
    assert result.output.strip().splitlines()[-1] == "error: interrupted"


def test_a_swallowed_signal_prints_no_traceback():
    """Python prints a finalizer's exception as "Exception ignored ... Traceback"; ours are recorded and raised
    again, so that print is dropped (outside pytest, whose own hook collects unraisable exceptions)."""
    script = ("import signal, sys; sys.path.insert(0, %r); from tests.test_interrupts import swallow; "
              "from kangaroo_trt.interrupts import signals_as_exceptions\n"
              "with signals_as_exceptions():\n    swallow(signal.SIGINT)\n"
              "class Other:\n    def __del__(self): raise ValueError('not ours')\n"
              "Other()\n") % str(Path(__file__).resolve().parents[1])
    err = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60).stderr
    assert "KeyboardInterrupt" not in err  # ours: silenced while the block runs
    assert "ValueError: not ours" in err  # anything else, and ours outside the block: printed as before
