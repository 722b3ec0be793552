"""What every CLI shares: user errors become one line on stderr and a non-zero exit."""

from __future__ import annotations

import functools
import sys

import click

from ..errors import KangarooError


def user_errors(fn):
    """Print a ``KangarooError`` as ``error: <one line>`` and exit 2; anything else keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KangarooError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)

    return wrapper


def quiet_libraries() -> None:
    """Keep third-party progress bars and advice off the user's terminal."""
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
