"""What every CLI shares: user errors become one line on stderr and a non-zero exit.

Exit status 2 for a user error (a ``KangarooError``, or an ``OSError`` such as a missing or unwritable path or a
full disk), 130 on Ctrl-C; on SIGTERM the process dies of the signal (143 in a shell) after one line. A signal
is raised as an exception inside the command first, so the cleanup of a half-written output (``atomic.py``)
runs before the process exits (``interrupts.py``: a signal is never lost, even one raised inside a finalizer).
Option values are checked while click parses them (``Command``, ``FINITE``, ``THREADS``), and a bad one is one
``error:`` line too, before any work or runtime object exists.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import sys

import click

from ..errors import KangarooError
from ..interrupts import Terminated, raise_if_interrupted, signals_as_exceptions


def _usage_error(err: click.UsageError, where: str) -> None:
    """A usage error (a bad option value, a missing option, an unknown command) as one line, like every other error."""
    if isinstance(err, getattr(click.exceptions, "NoArgsIsHelpError", ())):  # a bare group: its help, as click shows it
        raise err
    _fail(f"{err.format_message()} (see {err.ctx.command_path if err.ctx is not None else where} --help)", err.exit_code)


class Command(click.Command):
    """Every kangaroo-* command (``@click.command(cls=Command)``): its usage errors are one ``error:`` line too."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as err:
            _usage_error(err, info_name)


class Group(click.Group):
    """``kangaroo-export``'s command group: usage errors of the group and of its commands are one line."""

    command_class = Command

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as err:
            _usage_error(err, info_name)

    def resolve_command(self, ctx, args):
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as err:
            _usage_error(err, ctx.command_path)


def _name(param: click.Parameter | None) -> str:
    return param.opts[0] if param is not None and param.opts else "the value"


class FiniteFloat(click.FloatRange):
    """A float option that must be a finite number (``nan`` and ``inf`` are refused), within [min, max] if given.

    Every float option of every command takes it; ranges the Python API checks too (``DecodeConfig``) are left
    to it, so each has one message."""

    name = "float"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)  # the range check lets nan through (every comparison is false)
        if not math.isfinite(number):
            raise click.UsageError(f"{_name(param)} must be a finite number, got {value}", ctx)
        return number


FINITE = FiniteFloat()


class ThreadCount(click.ParamType):
    """``--threads``: an integer in 1 .. ``runtimes.max_threads()``, checked while the options are parsed, before any
    runtime (or its thread pool, which would create every thread asked for) exists."""

    name = "integer"

    def convert(self, value, param, ctx):
        from ..errors import ConfigError
        from ..runtimes import check_threads

        count = click.INT.convert(value, param, ctx)
        try:
            return check_threads(count)
        except ConfigError as err:
            raise click.UsageError(f"{_name(param)}: {err}", ctx) from None


THREADS = ThreadCount()


def thread_pool_option(command):
    """--thread-pool (kangaroo-run, kangaroo-bench): their process opens only our sessions, so they can share one."""
    from ..runtimes import THREAD_POOLS

    return click.option("--thread-pool", type=click.Choice(THREAD_POOLS), default="shared", show_default=True,
                        envvar="KANGAROO_TRT_THREAD_POOL",
                        help="ONNX Runtime CPU threads: one pool for the three graphs (faster), or one per graph.")(command)


def use_thread_pool(kind: str, threads: int | None) -> None:
    """Apply --thread-pool before the engine opens its sessions."""
    from ..runtimes import share_thread_pool

    if kind == "shared":
        share_thread_pool(threads)


def exact_option(command):
    """--exact/--no-exact (run, bench, serve, check): KangarooEngine.open's ``exact``."""
    return click.option("--exact/--no-exact", default=True, show_default=True,
                        help="Greedy Kangaroo bitwise identical to greedy AR by construction (decoding steps padded to "
                             "the row count the backend needs; free on ONNX Runtime CPU fp32/fp16). --no-exact skips the "
                             "padding and may flip near-ties.")(command)


def drafting_options(command):
    """The drafting fields of ``DecodeConfig`` as options (kangaroo-run and kangaroo-bench), defaults from the dataclass."""
    from ..config import POLICIES, DecodeConfig

    options = [
        click.option("--policy", type=click.Choice(POLICIES), default=None,
                     help="How a round picks its drafts: cost (as many as pay for their measured cost; --tau, "
                          "--draft-floor and adaptive gamma unused) or tau (the paper's confidence threshold) "
                          f"[{DecodeConfig.policy}; tau when --tau, --draft-floor or --fixed-gamma is given]."),
        click.option("--lookup-ngram", type=int, default=DecodeConfig.lookup_ngram, show_default=True,
                     help="Prompt lookup drafting: draft what followed an earlier occurrence of the context's last N or "
                          "more tokens, else the adapter's drafts; 0 turns it off."),
        click.option("--adaptive-gamma/--fixed-gamma", default=DecodeConfig.adaptive_gamma, show_default=True,
                     help="--policy tau: drafts per round one more after a fully accepted round, one fewer otherwise "
                          "(at most --gamma)."),
        click.option("--draft-floor", type=FINITE, default=DecodeConfig.draft_floor, show_default=True,
                     help="--policy tau: verify no draft in a round whose first adapter draft is less confident than "
                          "this (0: always verify it, as the paper does)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def os_error_line(err: OSError) -> str:
    """An OSError as one actionable line: what failed, on which path."""
    where = f" {err.filename}" if err.filename is not None else ""
    also = f" -> {err.filename2}" if getattr(err, "filename2", None) is not None else ""
    return f"{err.strerror or err}:{where}{also}: check the path, its permissions and the free disk space"


def user_errors(fn):
    """Print a user error as ``error: <one line>`` and exit 2 (130 on Ctrl-C; SIGTERM: cleanup, then the signal);
    anything else keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with signals_as_exceptions():
                result = fn(*args, **kwargs)
                raise_if_interrupted()  # a signal swallowed inside a finalizer still ends the command
            return result
        except KangarooError as err:
            _fail(str(err), 2)
        except OSError as err:
            _fail(os_error_line(err), 2)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except Terminated:  # cleaned up on the way out; now die of the signal, as a terminated process does
            click.echo("error: terminated", err=True)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            sys.exit(143)

    return wrapper


def _fail(message: str, status: int) -> None:
    click.echo(f"error: {' '.join(message.split())}", err=True)  # one line, whatever the message held
    sys.exit(status)


def quiet_libraries() -> None:
    """Keep third-party progress bars and advice off the user's terminal."""
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
