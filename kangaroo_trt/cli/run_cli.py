"""``kangaroo-run``: generate from an engine directory, streaming text or printing one JSON object."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..config import MODES, DecodeConfig
from .common import (FINITE, THREADS, Command, drafting_options, exact_option, quiet_libraries, thread_pool_option,
                     use_thread_pool, user_errors)


@click.command(cls=Command)
@click.option("--engine-dir", required=True, type=click.Path(path_type=Path), help="Directory written by kangaroo-export build.")
@click.option("--prompt", required=True, help="Prompt text ('-' reads it from standard input).")
@click.option("--chat", is_flag=True, help="Wrap the prompt in the model's chat template (special tokens typed in it stay text).")
@click.option("--parse-special-tokens", "parse_special", is_flag=True,
              help="With --chat: let special tokens typed in the prompt act as control tokens (trusted input only).")
@click.option("--max-new-tokens", type=int, default=DecodeConfig.max_new_tokens, show_default=True)
@click.option("--mode", type=click.Choice(MODES), default=MODES[0], show_default=True,
              help="ar: plain decoding on the same graphs (the baseline).")
@click.option("--gamma", type=int, default=None, help="Max drafts per round [manifest default].")
@click.option("--tau", type=FINITE, default=None, help="Stop drafting below this confidence [manifest default].")
@drafting_options
@click.option("--temperature", type=FINITE, default=DecodeConfig.temperature, show_default=True,
              help="0: greedy (equal to plain greedy decoding). Above 0: sample, losslessly (same distribution as plain sampling).")
@click.option("--top-k", type=int, default=DecodeConfig.top_k, show_default=True, help="Sample among the k most likely tokens (0: all).")
@click.option("--top-p", type=FINITE, default=DecodeConfig.top_p, show_default=True, help="Sample within the top-p probability mass.")
@click.option("--seed", type=int, default=None, help="Random seed for sampling (repeatable output per mode).")
@click.option("--stop", multiple=True, help="Stop before this text (repeatable); the output ends just before it.")
@click.option("--backend", default="auto", show_default=True,
              help="auto (TensorRT > onnxruntime-cuda > torch-cuda > onnxruntime-cpu), or one of: tensorrt, "
                   "onnxruntime-cuda, torch-cuda, onnxruntime-cpu, torch-cpu.")
@click.option("--threads", type=THREADS, default=None, help="CPU threads for the runtime [its default].")
@thread_pool_option
@click.option("--precision", default=None, help="Which graphs to run [the first in the manifest].")
@exact_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (prompt_ids, output_ids, text, stats).")
@user_errors
def main(engine_dir, prompt, chat, parse_special, max_new_tokens, mode, gamma, tau, policy, lookup_ngram,
         adaptive_gamma, draft_floor, temperature, top_k, top_p, seed, stop, backend, threads, thread_pool, precision,
         exact, as_json) -> None:
    """Generate with Kangaroo self-speculative decoding (or plain AR with --mode ar); greedy unless --temperature."""
    quiet_libraries()
    from ..runner.api import KangarooEngine
    from ..textio import check_text, read_stream

    prompt = read_stream(click.get_binary_stream("stdin"), "standard input") if prompt == "-" else check_text(prompt, "--prompt")
    stop = tuple(check_text(s, "--stop") for s in stop)
    use_thread_pool(thread_pool, threads)
    engine = KangarooEngine.open(engine_dir, backend=backend, precision=precision, threads=threads, exact=exact)
    config = engine.decode_config(mode=mode, gamma=gamma, tau=tau, max_new_tokens=max_new_tokens, temperature=temperature,
                                  top_k=top_k, top_p=top_p, seed=seed,
                                  lookup_ngram=lookup_ngram, adaptive_gamma=adaptive_gamma, draft_floor=draft_floor, policy=policy)
    ids = engine.encode(prompt, chat=True, parse_special=True) if parse_special and chat else None
    stream = engine.stream(prompt, prompt_ids=ids, chat=chat, config=config, stop=stop, text=not as_json)
    for piece in stream:
        click.echo(piece, nl=False)
    result = stream.result
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    s = result.stats
    click.echo("")
    click.echo(
        f"[{s.mode} | {s.backend} {s.precision}] {s.new_tokens} tokens in {s.total_s:.2f} s = {s.tokens_per_s:.1f} tok/s, "
        f"{s.acceptance.mean_accepted:.2f} tokens per deep pass over {s.acceptance.rounds} rounds, stop: {result.stop_reason}",
        err=True,
    )


if __name__ == "__main__":
    main()
