"""``kangaroo-tune``: choose exit layer, gamma and tau by timing ONNX Runtime engines against AR decoding."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import click

from ..train.cache import FeatureSettings
from ..train.trainer import TrainConfig
from ..train.tune import SweepConfig
from .common import THREADS, Command, quiet_libraries, user_errors
from .train_cli import pick_device, set_threads, training_options


def _numbers(text: str, kind: type, option: str) -> tuple:
    from ..errors import InputError

    try:
        numbers = tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InputError(f"{option} takes comma-separated {'integers' if kind is int else 'numbers'}, got {text!r}") from None
    if not all(math.isfinite(x) for x in numbers):
        raise InputError(f"{option} takes finite numbers, got {text!r}")
    return numbers


def _joined(values: tuple) -> str:
    return ",".join(map(str, values))


@click.command(cls=Command)
@click.option("--model", required=True, help="Local Hugging Face model directory, or a bundled name (smollm2-135m).")
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Training data as for kangaroo-train (validation prompts are its held-out split).")
@click.option("--adapter", "out", required=True, type=click.Path(path_type=Path),
              help="Adapter directory: written (with --exit-layers) or tuned in place.")
@click.option("--exit-layers", default="", help="Candidate exit layers, e.g. 2,4,6 (each trained briefly) [keep the adapter's].")
@click.option("--candidate-epochs", type=int, default=SweepConfig.candidate_epochs, show_default=True,
              help="Training epochs per candidate exit layer.")
@click.option("--gammas", default=_joined(SweepConfig.gammas), show_default=True)
@click.option("--taus", default=_joined(SweepConfig.taus), show_default=True)
@click.option("--prompts", type=int, default=SweepConfig.prompts, show_default=True, help="Validation prompts (held-out).")
@click.option("--max-new-tokens", type=int, default=SweepConfig.max_new_tokens, show_default=True)
@click.option("--runtime-threads", type=THREADS, default=SweepConfig.threads, show_default=True,
              help="ONNX Runtime threads for both modes.")
@click.option("--workdir", type=click.Path(path_type=Path), help="Candidate adapters and engines [a temporary directory].")
@click.option("--epochs", type=int, default=TrainConfig.epochs, show_default=True, help="Epochs for the chosen exit layer.")
@training_options
@user_errors
def main(model, data, out, exit_layers, candidate_epochs, gammas, taus, prompts, max_new_tokens, runtime_threads,
         workdir, self_distill, max_examples, max_prompt_tokens, top_k, epochs, lr, sequences_per_step,
         heldout_fraction, seed, exclude, device, threads, draft_vocab, adapter_mlp) -> None:
    """Sweep exit layers (optional) and gamma x tau; print the table and write the winner into the adapter."""
    quiet_libraries()
    from ..train.pipeline import DataSource, default_exclude
    from ..train.tune import tune

    set_threads(threads)
    source = DataSource(data, tuple(exclude) or default_exclude())
    settings = FeatureSettings(self_distill=self_distill, max_examples=max_examples, max_prompt_tokens=max_prompt_tokens,
                               max_new_tokens=max_new_tokens, top_k=top_k, seed=seed)
    config = TrainConfig(epochs=epochs, lr=lr, sequences_per_step=sequences_per_step,
                         heldout_fraction=heldout_fraction, seed=seed, draft_vocab=draft_vocab, adapter_mlp=adapter_mlp)
    sweep = SweepConfig(exit_layers=_numbers(exit_layers, int, "--exit-layers"), candidate_epochs=candidate_epochs,
                        gammas=_numbers(gammas, int, "--gammas"), taus=_numbers(taus, float, "--taus"), prompts=prompts,
                        max_new_tokens=max_new_tokens, threads=runtime_threads)
    if pick_device(device) != "cpu":
        click.echo("note: training runs on the GPU; the timed engines are ONNX Runtime CPU", err=True)
    with tempfile.TemporaryDirectory(prefix="kangaroo-tune-") as tmp:
        tune(model, source, out, config, settings, sweep, workdir or Path(tmp), pick_device(device),
             log=click.echo)


if __name__ == "__main__":
    main()
