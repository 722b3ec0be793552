"""Calibrate an adapter's draft acceptance for the cost policy and store it in the adapter's meta.

    PYTHONPATH=. .venv/bin/python scripts/calibrate_adapter.py --engine-dir engines/smollm2-135m \
        --adapter kangaroo_trt/adapters/smollm2-135m

Decodes the INT8 calibration prompts (``calib/prompts.py``: no Spec-Bench or MT-Bench prompt) with the engine,
drafting as far as allowed, and writes ``meta.calibration`` into the adapter's adapter_config.json; engines built
from the adapter afterwards carry it in their manifest (``runner/calibrate.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.option("--engine-dir", required=True, type=click.Path(path_type=Path))
@click.option("--adapter", "adapter_dir", type=click.Path(path_type=Path), help="Adapter directory to write into.")
@click.option("--max-new-tokens", type=int, default=96, show_default=True)
@click.option("--prompts", "count", type=int, default=16, show_default=True, help="How many calibration prompts.")
def main(engine_dir: Path, adapter_dir: Path | None, max_new_tokens: int, count: int) -> None:
    from kangaroo_trt.calib.prompts import CALIBRATION_PROMPTS
    from kangaroo_trt.runner.api import KangarooEngine
    from kangaroo_trt.runner.calibrate import calibrate
    from kangaroo_trt.runtimes import share_thread_pool
    from kangaroo_trt.train.tune import update_meta

    share_thread_pool(None)
    with KangarooEngine.open(engine_dir) as engine:
        prompts = [engine.encode([{"role": "user", "content": p}], chat=True) for p in CALIBRATION_PROMPTS[:count]]
        calibration = calibrate(engine, prompts, max_new_tokens)
    click.echo(json.dumps(calibration.to_dict()))
    if adapter_dir is not None:
        update_meta(adapter_dir, calibration=calibration.to_dict())
        click.echo(f"wrote meta.calibration into {adapter_dir}/adapter_config.json")


if __name__ == "__main__":
    main()
