"""``kangaroo-train``: train a Kangaroo adapter for a (frozen) target model."""

from __future__ import annotations

from pathlib import Path

import click

from ..train.cache import FeatureSettings
from ..train.trainer import INITS, TrainConfig
from .common import FINITE, THREADS, Command, quiet_libraries, user_errors


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def set_threads(threads: int | None) -> None:
    """--threads, already checked while the options were parsed (``common.THREADS``)."""
    import torch

    if threads:
        torch.set_num_threads(threads)


_TRAINING_OPTIONS = (  # defaults: the dataclasses' (FeatureSettings: the teacher pass, TrainConfig: training)
    click.option("--self-distill/--no-self-distill", default=FeatureSettings.self_distill, show_default=True,
                 help="Generate the responses greedily with the target itself (else train on the data's responses)."),
    click.option("--max-examples", type=int, default=FeatureSettings.max_examples, show_default=True),
    click.option("--max-prompt-tokens", type=int, default=FeatureSettings.max_prompt_tokens, show_default=True,
                 help="Longer prompts are left out."),
    click.option("--top-k", type=int, default=FeatureSettings.top_k, show_default=True,
                 help="Teacher probabilities kept per position."),
    click.option("--lr", type=FINITE, default=TrainConfig.lr, show_default=True),
    click.option("--sequences-per-step", type=int, default=TrainConfig.sequences_per_step, show_default=True),
    click.option("--heldout-fraction", type=FINITE, default=TrainConfig.heldout_fraction, show_default=True),
    click.option("--seed", type=int, default=TrainConfig.seed, show_default=True),
    click.option("--exclude", multiple=True, type=click.Path(path_type=Path),
                 help="Question file whose prompts must not be trained on [the bundled Spec-Bench questions]."),
    click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
    click.option("--threads", type=THREADS, default=None, help="PyTorch CPU threads for training [PyTorch default]."),
    click.option("--draft-vocab", type=int, default=TrainConfig.draft_vocab, show_default=True,
                 help="Train the draft head over this many most frequent response tokens (0: full vocabulary)."),
    click.option("--adapter-mlp/--no-adapter-mlp", default=TrainConfig.adapter_mlp, show_default=True,
                 help="Add the decoder block's MLP to the adapter (this project's variant, recorded in its config; "
                      "the paper's adapter is attention only)."),
)


def training_options(command):
    """The data, teacher and training options kangaroo-train and kangaroo-tune share: one list, one set of defaults."""
    for option in reversed(_TRAINING_OPTIONS):
        command = option(command)
    return command


@click.command(cls=Command)
@click.option("--model", required=True, help="Local Hugging Face model directory, or a bundled name (smollm2-135m).")
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="JSONL (ShareGPT conversations, messages, prompt[/response] or text lines) or a ShareGPT JSON dump.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Adapter directory to write.")
@click.option("--exit-layer", type=int, default=TrainConfig.exit_layer, show_default=True,
              help="Shallow layers before the early exit.")
@click.option("--max-new-tokens", type=int, default=FeatureSettings.max_new_tokens, show_default=True,
              help="Response length cap.")
@click.option("--epochs", type=int, default=TrainConfig.epochs, show_default=True)
@click.option("--init", type=click.Choice(INITS), default=TrainConfig.init, show_default=True,
              help="copy: start from the target's layer-EXIT_LAYER attention and final norm.")
@click.option("--init-from", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Go on training this adapter directory (e.g. on your own traffic): its geometry and draft head stay.")
@click.option("--skip-bad-lines", is_flag=True, help="Skip malformed records instead of stopping at the first.")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Teacher-feature cache [under KANGAROO_TRT_CACHE].")
@click.option("--gamma", type=int, default=None, help="Decoding default written into the adapter (kangaroo-tune picks one).")
@click.option("--tau", type=FINITE, default=None, help="Decoding default written into the adapter (with --gamma).")
@training_options
@user_errors
def main(model, data, out, exit_layer, self_distill, max_examples, max_prompt_tokens, max_new_tokens, top_k, epochs,
         lr, sequences_per_step, heldout_fraction, init, init_from, seed, exclude, skip_bad_lines, cache_dir, gamma, tau, device,
         threads, draft_vocab, adapter_mlp) -> None:
    """Train the adapter (target frozen) on the paper's objective and write OUT with a TRAINING_CARD.md.

    Interrupted runs resume from OUT's checkpoint and the cached teacher features.
    """
    quiet_libraries()
    from ..config import DecodeConfig
    from ..errors import InputError
    from ..paths import writable_dir

    writable_dir(out, "--out")  # now, not after the teacher pass and the training (as kangaroo-bench does)
    if (gamma is None) != (tau is None):
        raise InputError("give --gamma and --tau together (the decoding defaults written into the adapter), or neither")
    decode = None if gamma is None else {"gamma": gamma, "tau": tau}
    if decode:
        DecodeConfig(**decode)  # a bad value fails now, not after training
    from ..train.pipeline import DataSource, default_exclude, train_adapter

    set_threads(threads)
    source = DataSource(data, tuple(exclude) or default_exclude(), skip_bad_lines)
    settings = FeatureSettings(self_distill=self_distill, max_examples=max_examples, max_prompt_tokens=max_prompt_tokens,
                               max_new_tokens=max_new_tokens, top_k=top_k, seed=seed)
    config = TrainConfig(exit_layer=exit_layer, epochs=epochs, lr=lr, sequences_per_step=sequences_per_step,
                         heldout_fraction=heldout_fraction, init=init, seed=seed, draft_vocab=draft_vocab,
                         adapter_mlp=adapter_mlp, init_from=str(init_from or ""))
    train_adapter(model, source, out, config, settings, cache_dir, pick_device(device), decode=decode, log=click.echo)


if __name__ == "__main__":
    main()
