"""``kangaroo-serve``: an OpenAI-compatible HTTP server over an engine directory (kangaroo_trt/serve)."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import MODES
from .common import THREADS, Command, FiniteFloat, exact_option, quiet_libraries, user_errors


@click.command(cls=Command)
@click.option("--engine-dir", required=True, type=click.Path(path_type=Path), help="Directory written by kangaroo-export build.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Engines in the pool, each with its own KV caches, serving one request at a time "
                   "[one per 4 CPU cores, at most 4].")
@click.option("--max-queue", type=click.IntRange(min=0), default=16, show_default=True,
              help="Requests that may wait for an engine; past that a request gets 429 at once.")
@click.option("--mode", type=click.Choice(MODES), default=MODES[0], show_default=True,
              help="ar: plain decoding on the same graphs (the baseline).")
@click.option("--model-name", default=None, help="The model id clients send and GET /v1/models lists [the engine directory's name].")
@click.option("--backend", default="auto", show_default=True,
              help="auto (TensorRT > onnxruntime-cuda > torch-cuda > onnxruntime-cpu), or one of: tensorrt, "
                   "onnxruntime-cuda, torch-cuda, onnxruntime-cpu, torch-cpu.")
@click.option("--precision", default=None, help="Which graphs to run [the first in the manifest].")
@exact_option
@click.option("--threads", type=THREADS, default=None, help="CPU threads per engine [cores / workers].")
@click.option("--shutdown-timeout", type=FiniteFloat(min=0), default=30.0, show_default=True,
              help="On SIGTERM, seconds running requests get to finish before they are stopped (503); "
                   "queued ones get 503 at once.")
@click.option("--max-body-mb", type=click.IntRange(min=1), default=4, show_default=True,
              help="Largest request body in megabytes; a larger one gets 413.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True)
@user_errors
def main(engine_dir, host, port, workers, max_queue, mode, model_name, backend, precision, exact, threads, shutdown_timeout,
         max_body_mb, log_level) -> None:
    """Serve an engine directory over OpenAI's API: /v1/chat/completions, /v1/completions, /v1/models, /health, /metrics."""
    quiet_libraries()
    from ..serve.app import Settings, create_app
    from ..serve.pool import EnginePool, default_workers, open_workers
    from ..serve.server import bind, make_server

    name = model_name or engine_dir.resolve().name
    settings = Settings(name, mode=mode, shutdown_timeout=shutdown_timeout, max_body_mb=max_body_mb)  # checked first
    sock = bind(host, port)  # a busy port fails before the engines load
    count = workers or default_workers()
    pool = EnginePool(open_workers(engine_dir, count, backend=backend, precision=precision, threads=threads,
                                     exact=exact), max_queue)
    app = create_app(pool, settings)
    click.echo(f"kangaroo-serve: {name} ({mode}, {count} engine(s), {pool.workers[0].description}, queue {max_queue}) "
               f"on http://{host}:{sock.getsockname()[1]}", err=True)
    make_server(app, log_level).run(sockets=[sock])


if __name__ == "__main__":
    main()
