"""``kangaroo-serve-load``: a bounded loopback load run of kangaroo-serve, Kangaroo vs AR (kangaroo_trt/serve/load.py)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..serve.load import LoadConfig
from .common import THREADS, Command, FiniteFloat, quiet_libraries, user_errors


def _ints(_ctx, _param, value: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None
    if any(v < 1 for v in out):
        raise click.BadParameter("every pool size must be at least 1")
    return out


@click.command(cls=Command)
@click.option("--engine-dir", required=True, type=click.Path(path_type=Path), help="Directory written by kangaroo-export build.")
@click.option("--requests", type=click.IntRange(min=1), default=LoadConfig.requests, show_default=True, help="Requests per run.")
@click.option("--concurrency", type=click.IntRange(min=1), default=LoadConfig.concurrency, show_default=True, help="Requests in flight at once.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=LoadConfig.max_tokens, show_default=True)
@click.option("--workers", "workers", default="1,2", show_default=True, callback=_ints, help="Pool sizes to run, comma-separated.")
@click.option("--time-limit", type=FiniteFloat(min=1), default=LoadConfig.time_limit, show_default=True, help="Seconds per run.")
@click.option("--no-chat", is_flag=True, help="Use /v1/completions with the raw question (engines without a chat template).")
@click.option("--backend", default="auto", show_default=True)
@click.option("--threads", type=THREADS, default=None, help="CPU threads per engine [cores / workers].")
@click.option("--out", type=click.Path(path_type=Path), default=Path("serve-load-report"), show_default=True)
@user_errors
def main(engine_dir, requests, concurrency, max_tokens, workers, time_limit, no_chat, backend, threads, out) -> None:
    """Load kangaroo-serve on loopback (AR, then Kangaroo, per pool size) and write report.md / report.json."""
    quiet_libraries()
    from ..bench.environment import environment
    from ..bench.questions import load_questions
    from ..errors import InputError
    from ..serve.load import markdown, report, run_load

    try:
        import openai  # noqa: F401  (the load run's client)
    except ImportError:
        raise InputError("the load run needs the openai client: pip install openai") from None
    config = LoadConfig(requests=requests, concurrency=concurrency, max_tokens=max_tokens, time_limit=time_limit,
                        chat=not no_chat)
    prompts = [q.turns[0] for q in load_questions()]
    runs = run_load(engine_dir, prompts, workers, ["ar", "kangaroo"], config, backend=backend, threads=threads,
                    progress=lambda line: click.echo(line, err=True))
    rep = report(runs, config, engine_dir.resolve().name, environment())
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(rep, indent=2) + "\n")
    (out / "report.md").write_text(markdown(rep))
    click.echo(markdown(rep))


if __name__ == "__main__":
    main()
