"""TRAINING_CARD.md: what an adapter was trained on, how, and how well; rewritten from its config's meta."""

from __future__ import annotations

import json
from pathlib import Path

from ..markdown import markdown_table
from ..model.weights import ADAPTER_CONFIG

CARD = "TRAINING_CARD.md"


def _table(rows: list[dict], columns: list[tuple[str, str]]) -> list[str]:
    """A Markdown table of ``rows`` (dicts), one column per (key, title); floats with three decimals."""
    cell = lambda value: f"{value:.3f}" if isinstance(value, float) else str(value)  # noqa: E731
    return markdown_table([title for _, title in columns], [[cell(row.get(key, "")) for key, _ in columns] for row in rows])


def _init(train: dict, parent: dict | None) -> str:
    if not parent:
        return f"adapter init `{train['init']}`"
    top1 = (parent.get("heldout") or {}).get("top1")
    return f"trained further from the adapter `{parent['path']}`" + (f" (its held-out top-1 {top1:.3f})" if top1 else "")


def _head(train: dict, meta: dict) -> str:
    vocab = meta.get("draft_vocab")
    if not vocab:
        return "the target's LM head"
    when = "trained with it" if train.get("draft_vocab") else "restricted after training"
    return (f"{vocab['size']} rows of the target's LM head, the most frequent response tokens "
            f"({vocab['coverage']:.1%} of the training ones), {when}")


def write_card(adapter_dir: Path) -> Path:
    """Render the card from ``adapter_config.json`` (training record, and the tuning sweep if any)."""
    cfg = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    meta, exit_layer = cfg.get("meta", {}), cfg.get("exit_layer")
    training = meta.get("training", {})
    lines = [f"# Kangaroo adapter: {meta.get('model', 'unknown model')}, exit layer {exit_layer}", ""]
    if training:
        data, teacher, train = training["data"], training["teacher"], training["train"]
        responses = "greedy self-distilled by the target model" if teacher["self_distill"] else "as given in the data"
        block = "attention block + MLP (this project's variant)" if cfg["adapter"].get("mlp_size") else "attention block (the paper's)"
        teacher_pass = "greedy generation + hidden states" if teacher["self_distill"] else "the target's pass over the responses"
        lines += [
            "## Data",
            f"- file: `{data['file']}` ({data['usable_records']} usable records); {data['examples']} examples selected "
            f"(seed {teacher['seed']}), first user turn as prompt (<= {teacher['max_prompt_tokens']} tokens)",
            f"- responses: {responses}, <= {teacher['max_new_tokens']} tokens; teacher top-{teacher['top_k']} kept",
            f"- left out: {data.get('benchmark_records_left_out', '?')} records containing a prompt of "
            f"{', '.join(data['benchmark_prompts_excluded_from']) or 'no benchmark file'}",
            f"- {training['train_tokens']} training / {training['heldout_tokens']} held-out response tokens "
            f"({train['heldout_fraction']:.0%} of examples held out)",
            "",
            "## Training",
            f"- objective: soft cross-entropy to the target's next-token distribution, response tokens only; "
            f"target frozen, {_init(train, training.get('init_from'))}",
            f"- adapter: {block}; draft head: {_head(train, meta)}",
            f"- {train['epochs']} epochs, {training['steps']} steps of {train['sequences_per_step']} sequences, "
            f"AdamW {tuple(train['betas'])}, lr {train['lr']} (warm-up {train['warmup_steps']}, cosine), seed {train['seed']}",
            f"- time on {training['device']}: {training['train_seconds']:.0f} s training ({training['total_seconds']:.0f} s "
            f"for the command); the teacher features ({teacher_pass}) took "
            f"{data.get('teacher_seconds') or '?'} s when first built and are cached",
            "",
            "## Held-out metrics (per response token)",
            "",
        ]
        rows = [{"epoch": h["epoch"], **{k: v for k, v in h["heldout"].items() if k != "tokens"}} for h in training["history"]]
        lines += _table(rows, [("epoch", "epoch"), ("loss", "soft CE"), ("acceptance", "expected acceptance sum min(p,q)"),
                               ("top1", "top-1 agreement")])
        lines.append("")
    tuning = meta.get("tuning")
    if tuning:
        lines += ["## Tuning (ONNX Runtime CPU, greedy, " + tuning["prompts"] + ")", ""]
        if tuning.get("exit_layer_rows"):
            lines += ["Exit layers, each after a short training run, at the default gamma/tau:", ""]
            lines += tuning_table(tuning["exit_layer_rows"]) + ["", "gamma / tau on the chosen exit layer:", ""]
        lines += tuning_table(tuning["rows"])
        lines += ["", f"Chosen: {tuning['chosen']}", ""]
    evaluation = meta.get("evaluation")
    if evaluation:
        lines += ["## Evaluation", "", *evaluation, ""]
    decode = meta.get("decode")
    if decode:
        lines += [f"Decoding defaults written to the config: gamma {decode['gamma']}, tau {decode['tau']}.", ""]
    path = adapter_dir / CARD
    path.write_text("\n".join(lines))
    return path


def tuning_table(rows: list[dict]) -> list[str]:
    return _table(rows, [("exit_layer", "exit layer"), ("gamma", "gamma"), ("tau", "tau"),
                         ("mean_accepted", "mean accepted / deep pass"), ("kangaroo_tok_s", "Kangaroo tok/s"),
                         ("ar_tok_s", "AR tok/s"), ("speedup", "speedup"), ("mismatches", "outputs != AR")])
