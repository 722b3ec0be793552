"""``kangaroo-bench``: Spec-Bench speedup, acceptance and CTAR of Kangaroo against AR, with an equality check.

Exit status: 0 when every turn's Kangaroo tokens equal AR's (near-ties allowed), 1 on any other mismatch,
2 on a user error, 130 when interrupted (the report then holds the questions finished so far).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from ..config import DecodeConfig
from .common import (FINITE, THREADS, Command, drafting_options, exact_option, quiet_libraries, thread_pool_option,
                     use_thread_pool, user_errors)

QUICK = "--limit 2 --max-new-tokens 64"  # every category, a few minutes on 2 CPU cores


def _categories(values: tuple[str, ...]) -> list[str] | None:
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    return names or None


def _command_line(ctx: click.Context) -> str:
    """The options that were given, as a command a reader can paste."""
    words = ["kangaroo-bench"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if ctx.get_parameter_source(param.name) != click.core.ParameterSource.COMMANDLINE:
            continue
        flag = param.opts[0]
        if param.is_flag:
            words.append(flag)
        elif isinstance(value, tuple):
            words += [w for v in value for w in (flag, v)]
        else:
            words += [flag, str(value)]
    return shlex.join(words)


@click.command(cls=Command, epilog=f"Quick setting covering every category: {QUICK}")
@click.option("--engine-dir", required=True, type=click.Path(path_type=Path), help="Directory written by kangaroo-export build.")
@click.option("--questions", "questions_file", type=click.Path(path_type=Path),
              help="JSONL of question_id, category, turns [the 480 Spec-Bench questions].")
@click.option("--categories", multiple=True, help="Comma-separated tasks (mt_bench, translation, summarization, qa, "
              "math_reasoning, rag) [all].")
@click.option("--limit", type=int, default=None, help="Questions per category [all].")
@click.option("--max-new-tokens", type=int, default=1024, show_default=True, help="Per turn (Spec-Bench: 1024).")
@click.option("--gamma", type=int, default=None, help="Max drafts per round [manifest default].")
@click.option("--tau", type=FINITE, default=None, help="Stop drafting below this confidence [manifest default].")
@drafting_options
@click.option("--temperature", type=FINITE, default=DecodeConfig.temperature, show_default=True,
              help="0: greedy, with the equality check. Above 0: both modes sample (no token-for-token check).")
@click.option("--top-k", type=int, default=DecodeConfig.top_k, show_default=True, help="Sampling: the k most likely tokens (0: all).")
@click.option("--top-p", type=FINITE, default=DecodeConfig.top_p, show_default=True, help="Sampling: the top-p probability mass.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling: turn i uses seed + i in both modes.")
@click.option("--backend", default="auto", show_default=True, help="auto, or a backend name (onnxruntime-cpu, ...).")
@click.option("--precision", default=None, help="Which graphs to run [the first in the manifest].")
@exact_option
@click.option("--threads", type=THREADS, default=None, help="Runtime threads [runtime default].")
@thread_pool_option
@click.option("--hf-baseline", is_flag=True, help="Also time transformers generate on the engine's source model.")
@click.option("--no-warmup", is_flag=True, help="Skip the untimed warm-up generation.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("bench-report"), show_default=True,
              help="Report directory (report.md, report.json, PNG plots).")
@user_errors
def main(engine_dir, questions_file, categories, limit, max_new_tokens, gamma, tau, policy, lookup_ngram,
         adaptive_gamma, draft_floor, temperature, top_k, top_p, seed, backend, precision, exact, threads, thread_pool,
         hf_baseline, no_warmup,
         out_dir) -> None:
    """Benchmark Kangaroo against plain greedy (AR) decoding on Spec-Bench and check their outputs are equal."""
    quiet_libraries()
    from tqdm import tqdm

    from ..bench import BenchConfig, build_report, load_questions, run_bench, select, write_report
    from ..bench.environment import environment
    from ..bench.markdown import terminal_table
    from ..errors import InputError
    from ..paths import writable_dir
    from ..runner.api import KangarooEngine
    from ..runtimes import thread_pool as runtime_pool

    if max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    writable_dir(out_dir, "--out")  # now, not after the whole run
    command = _command_line(click.get_current_context())
    questions = select(load_questions(questions_file), _categories(categories), limit)
    use_thread_pool(thread_pool, threads)
    engine = KangarooEngine.open(engine_dir, backend=backend, precision=precision, threads=threads, exact=exact)
    baseline = None
    if hf_baseline:
        from ..bench.hf_baseline import TransformersBaseline

        baseline = TransformersBaseline.for_engine(engine, threads)

    decode = engine.decode_config(gamma=gamma, tau=tau, max_new_tokens=max_new_tokens, temperature=temperature,
                                  top_k=top_k, top_p=top_p, seed=seed, lookup_ngram=lookup_ngram,
                                  adaptive_gamma=adaptive_gamma, draft_floor=draft_floor, policy=policy)  # a bad --gamma fails here, before the progress bar
    config = BenchConfig(decode, warmup=not no_warmup)
    costs = engine.cost_table() if decode.policy == "cost" else None  # measured or cached now, before any timing
    if costs is not None:
        click.echo("\n".join(costs.lines()), err=True)
    matched = [0, 0]
    with tqdm(total=len(questions), unit="question", desc="kangaroo-bench", file=sys.stderr, dynamic_ncols=True) as bar:

        def progress(run) -> None:
            matched[0] += sum(t.equality.status == "match" for t in run.turns)
            matched[1] += len(run.turns)
            bar.set_postfix_str(f"{run.question.task} | " + ("sampled" if temperature > 0 else f"matched {matched[0]}/{matched[1]}"))
            bar.update(1)

        bench = run_bench(engine, questions, config, baseline, progress)

    settings = {"questions": str(questions_file) if questions_file else "Spec-Bench (480 questions, shipped)",
                "categories": _categories(categories), "limit": limit, "threads": threads,
                "thread_pool": runtime_pool(), "costs": costs.to_dict() if costs is not None else None}
    report = build_report(bench, engine, command, settings, environment())
    paths = write_report(report, out_dir)
    click.echo(terminal_table(report))
    click.echo(f"report: {paths['markdown']} (+ {paths['json'].name}, {len(paths) - 2} plots)")
    if not report["equality"]["passed"]:
        click.echo("error: Kangaroo output differs from AR beyond a near-tie: see the equality section of the report",
                   err=True)
        sys.exit(1)
    if bench.interrupted:
        sys.exit(130)
    if not bench.completed:
        raise InputError("no question was benchmarked (every prompt was too long): rebuild with a larger --max-seq-len")


if __name__ == "__main__":
    main()
