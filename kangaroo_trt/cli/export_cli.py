"""``kangaroo-export``: build engine directories."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import PRECISIONS, TENSORRT_MODES, DecodeConfig, ExportConfig
from .common import FINITE, Group, quiet_libraries, user_errors


@click.group(cls=Group)
def main() -> None:
    """Export a Hugging Face Llama-family model with a Kangaroo adapter to ONNX (and TensorRT) engines."""
    quiet_libraries()


@main.command()
@click.option("--model", required=True, help="Local Hugging Face model directory, or a bundled name (smollm2-135m).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Engine directory to write.")
@click.option("--adapter", type=click.Path(path_type=Path), help="Adapter directory (kangaroo-trt or official format) [bundled models: the shipped one].")
@click.option("--random-adapter", is_flag=True, help="Use a random adapter: exact output, no speed-up.")
@click.option("--exit-layer", type=int,
              help=f"Shallow layers before the early exit [default: the adapter's, else {ExportConfig.exit_layer}].")
@click.option("--max-seq-len", type=int, default=ExportConfig.max_seq_len, show_default=True,
              help="KV-cache positions (prompt + output).")
@click.option("--precision", default=",".join(ExportConfig.precisions), show_default=True,
              help=f"Comma-separated: {', '.join(PRECISIONS)}.")
@click.option("--gamma", type=int, default=None,
              help=f"Default max drafts per round recorded in the manifest [the adapter's, else {DecodeConfig.gamma}].")
@click.option("--tau", type=FINITE, default=None,
              help=f"Default early-exit confidence threshold [the adapter's, else {DecodeConfig.tau}].")
@click.option("--tensorrt", type=click.Choice(TENSORRT_MODES), default=ExportConfig.tensorrt, show_default=True,
              help="Build TensorRT plans: where TensorRT imports (auto), never (off), or fail without it (require).")
@click.option("--force", is_flag=True, help="Replace an existing engine directory.")
@user_errors
def build(model, out, adapter, random_adapter, exit_layer, max_seq_len, precision, gamma, tau, tensorrt, force) -> None:
    """Export shallow / adapter / deep graphs, check them against PyTorch, and write OUT atomically."""
    from ..build import build_engine_dir, choose_adapter, export_config

    checkpoint = choose_adapter(adapter, random_adapter, model)
    export = export_config(checkpoint, exit_layer=exit_layer, gamma=gamma, tau=tau, max_seq_len=max_seq_len,
                           precisions=tuple(p.strip() for p in precision.split(",") if p.strip()), tensorrt=tensorrt)
    build_engine_dir(model, out, export, adapter=checkpoint, force=force, log=click.echo)



@main.command()
@click.option("--engine-dir", required=True, type=click.Path(path_type=Path), help="Directory written by kangaroo-export build.")
@click.option("--precision", default=None, help="Comma-separated precisions to build plans for [all in the manifest].")
@user_errors
def engines(engine_dir, precision) -> None:
    """Build TensorRT plans (one per graph and precision) into an existing engine directory."""
    from ..engines.builder import add_plans

    precisions = tuple(p.strip() for p in precision.split(",") if p.strip()) if precision else None
    add_plans(engine_dir, precisions, log=click.echo)


if __name__ == "__main__":
    main()
