"""``kangaroo-check``: is Kangaroo bitwise identical to plain decoding on this backend and precision?"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .common import THREADS, Command, exact_option, quiet_libraries, thread_pool_option, use_thread_pool, user_errors


@click.command(cls=Command)
@click.option("--engine-dir", required=True, type=click.Path(path_type=Path), help="Directory written by kangaroo-export build.")
@click.option("--backend", default="auto", show_default=True, help="auto, or a backend name (onnxruntime-cpu, torch-cpu, ...).")
@click.option("--precision", default=None, help="Which graphs to check [the first in the manifest].")
@exact_option
@click.option("--prompts", type=click.IntRange(min=1), default=4, show_default=True, help="How many built-in prompts to check.")
@click.option("--fills", type=click.IntRange(min=1), default=3, show_default=True,
              help="Cache fills per prompt at which rows are compared.")
@click.option("--new-tokens", type=click.IntRange(min=1), default=48, show_default=True,
              help="Tokens each Kangaroo and AR generation decodes.")
@click.option("--threads", type=THREADS, default=None, help="Runtime threads [runtime default].")
@thread_pool_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@user_errors
def main(engine_dir, backend, precision, exact, prompts, fills, new_tokens, threads, thread_pool, as_json) -> None:
    """Check bitwise, on the shallow and deep graphs and the KV-cache rows, that n-row calls (verify, prompt lookup)
    give the rows n one-row calls (AR) give, for n = 2 .. max_verify; then Kangaroo against AR on a few prompts.
    Exits 0 only when everything is bitwise equal."""
    quiet_libraries()
    from ..runner.api import KangarooEngine
    from ..runner.exactness import CHECK_PROMPTS, check_engine

    use_thread_pool(thread_pool, threads)
    with KangarooEngine.open(engine_dir, backend=backend, precision=precision, threads=threads, exact=exact) as engine:
        ids = [engine.encode(text, chat=False) for text in (CHECK_PROMPTS * prompts)[:prompts]]
        report = check_engine(engine, ids, new_tokens=new_tokens, fills_per_prompt=fills)
    click.echo(json.dumps(report.to_dict()) if as_json else report.table())
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
