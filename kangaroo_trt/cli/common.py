"""What every CLI shares: user errors become one line on stderr and a non-zero exit.

Exit status 2 for a user error (a ``KangarooError``, or an ``OSError`` such as a missing or unwritable path or a
full disk), 130 on Ctrl-C; on SIGTERM the process dies of the signal (143 in a shell) after one line. A signal
is raised as an exception inside the command first, so the cleanup of a half-written output (``atomic.py``)
runs before the process exits (``interrupts.py``: a signal is never lost, even one raised inside a finalizer).
"""

from __future__ import annotations

import functools
import os
import signal
import sys

import click

from ..errors import KangarooError
from ..interrupts import Terminated, raise_if_interrupted, signals_as_exceptions


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
        click.option("--draft-floor", type=float, default=DecodeConfig.draft_floor, show_default=True,
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
