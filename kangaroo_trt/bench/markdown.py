"""Render a report dict as Markdown (report.md) and as the summary table printed on the terminal."""

from __future__ import annotations

from typing import Any

from ..markdown import markdown_table


def _num(value, fmt: str = "{:.2f}", missing: str = "n/a") -> str:
    return missing if value is None else fmt.format(value)


def drafting_summary(settings: dict[str, Any]) -> str:
    """Prompt lookup, adaptive gamma and the draft floor as the run used them (older reports: not recorded)."""
    if "lookup_ngram" not in settings:
        return "drafting options not recorded"
    ngram = settings["lookup_ngram"]
    lookup = f"prompt lookup {f'from {ngram}-grams' if ngram else 'off'}"
    if settings.get("policy") == "cost":
        return f"cost policy (drafts as far as they pay for their measured cost), {lookup}"
    return (f"{lookup}, {'adaptive' if settings['adaptive_gamma'] else 'fixed'} gamma, "
            f"draft floor {settings['draft_floor']}")


def cost_lines(settings: dict[str, Any]) -> list[str]:
    """The measured cost table the cost policy weighed (runner/costs.py), when the run recorded one."""
    if not settings.get("costs"):
        return []
    from ..runner.costs import CostTable

    return ["```", *CostTable.from_dict(settings["costs"]).lines(), "```", ""]


def _adapter_note(report: dict[str, Any]) -> str | None:
    adapter = report["engine"].get("adapter") or {}
    if adapter.get("source") == "random":
        return ("**The adapter is random** (`--random-adapter`): its drafts are noise, so almost every draft is "
                "rejected and no speedup is expected; this report shows the cost of drafting and the equality "
                "check, not what a trained adapter achieves.")
    return None


def adapter_summary(meta: dict[str, Any] | None) -> str:
    """One line about the adapter from its metadata (the full metadata stays in report.json)."""
    meta = meta or {}
    if meta.get("source") == "random":
        return f"random (seed {meta.get('seed', 'n/a')})"
    training = meta.get("training") or {}
    if not training:
        return ", ".join(f"{k}: {v}" for k, v in meta.items() if not isinstance(v, (dict, list))) or "no metadata"
    data, last = training.get("data") or {}, (training.get("history") or [{}])[-1]
    parts = [f"trained on {data.get('examples', 'n/a')} examples of {data.get('file', 'n/a')}",
             f"{training.get('steps', 'n/a')} steps"]
    heldout = last.get("heldout") or {}
    if "top1" in heldout:
        parts.append(f"held-out top-1 agreement {heldout['top1']:.3f}, expected acceptance "
                     f"{heldout.get('acceptance', float('nan')):.3f}")
    return "; ".join(parts)


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    """Per task and overall: questions, AR and Kangaroo tok/s, speedup, #MAT, matched turns (+ baseline)."""
    baseline = report["settings"].get("baseline")
    rows = []
    for name, s in list(report["by_task"].items()) + [("overall", report["overall"])]:
        row = [name, str(s["questions"]), _num(s["ar_tokens_per_s"], "{:.1f}"), _num(s["kangaroo_tokens_per_s"], "{:.1f}"),
               _num(s["speedup"], "{:.2f}x"), _num(s["mean_accepted"]),
               "sampled" if report["settings"].get("sampling") else f"{s['matched_turns']}/{s['turns']}"]
        if baseline:
            row += [_num(s[f"{baseline}_tokens_per_s"], "{:.1f}"), _num(s[f"speedup_vs_{baseline}"], "{:.2f}x")]
        rows.append(row)
    return rows


def table_header(report: dict[str, Any]) -> list[str]:
    header = ["task", "questions", "AR tok/s", "Kangaroo tok/s", "speedup", "mean accepted", "matched turns"]
    baseline = report["settings"].get("baseline")
    if baseline:
        header += [f"{baseline} tok/s", f"speedup vs {baseline}"]
    return header


def terminal_table(report: dict[str, Any]) -> str:
    """Fixed-width summary table with the equality verdict under it."""
    header, rows = table_header(report), table_rows(report)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    out = [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]
    out.append(equality_line(report))
    if report["progress"]["interrupted"]:
        out.append(f"interrupted: {report['progress']['finished']} of {report['progress']['selected']} questions ran")
    return "\n".join(out)


def equality_line(report: dict[str, Any]) -> str:
    eq = report["equality"]
    if not eq["turns"]:
        return "equality: no turn was compared"
    if eq.get("sampled"):
        return (f"equality: not checked, {eq['sampled']} turns sampled at temperature "
                f"{report['settings']['sampling']['temperature']:g} (equal in distribution, not token for token)")
    verdict = "PASSED" if eq["passed"] else "FAILED"
    return (f"equality {verdict}: {eq['matched']}/{eq['turns']} turns token-identical to AR, "
            f"{len(eq['near_ties'])} near-ties (margin < {report['settings']['near_tie_margin']:g}), "
            f"{len(eq['mismatches'])} mismatches")


def render_markdown(report: dict[str, Any], plots: dict[str, str]) -> str:
    e, env, st, o = report["engine"], report["environment"], report["settings"], report["overall"]
    gamma = st["gamma"]
    lines = [f"# kangaroo-bench: {e['source_model']} on {e['backend']} ({e['precision']})", ""]
    if report.get("command"):
        lines += ["Command:", "", "```sh", report["command"], "```", ""]
    note = _adapter_note(report)
    if note:
        lines += [note, ""]
    lines += [
        f"**Overall speedup {_num(o['speedup'], '{:.2f}x')}** (Spec-Bench's definition: mean tokens/s of Kangaroo "
        f"over mean tokens/s of plain greedy AR decoding on the same engines, same process), "
        f"**{_num(o['mean_accepted'])} tokens per deep pass** (#MAT), {o['questions']} questions "
        f"({o['turns']} turns, {o['new_tokens']} new tokens per method). {equality_line(report)}.", "",
    ]
    baseline = st.get("baseline")
    if baseline:
        lines += [f"Baseline `{baseline}` (transformers `generate`, PyTorch fp32, greedy, same prompt ids): "
                  f"{_num(o[f'{baseline}_tokens_per_s'], '{:.1f}')} tok/s; its tokens "
                  f"equal AR's on {o[f'{baseline}_matches_ar_turns']} of {o['turns']} turns (informational: another "
                  "runtime may break near-ties differently).", ""]
    if report["progress"]["interrupted"]:
        lines += [f"Interrupted (Ctrl-C): {report['progress']['finished']} of {report['progress']['selected']} "
                  "selected questions ran; the numbers cover those only.", ""]
    lines += markdown_table(table_header(report), table_rows(report)) + [""]
    lines += ["## Setting", ""] + markdown_table(["", ""], [
        ["engine", f"`{e['directory']}`: exit layer {e['exit_layer']}, cache {e['max_seq_len']} positions"],
        ["adapter", adapter_summary(e["adapter"]) +
         (f" (adapter.safetensors sha256 `{e['adapter_sha256'][:16]}`)" if e.get("adapter_sha256") else "")],
        ["decoding", f"greedy, batch 1, gamma {gamma}, tau {st['tau']}, {drafting_summary(st)}, "
                     f"max {st['max_new_tokens']} new tokens, prompts: {st['prompt_format']}"],
        ["questions", f"{st.get('questions', 'n/a')}; categories {', '.join(st.get('categories') or ['all'])}, "
                      f"limit {st.get('limit') or 'none'} per category"],
        ["protocol", "warm-up run per method, then per turn both methods on the same prompt, order alternating; "
                     "second turns follow the model's own first answer"],
        ["machine", f"{env.get('cpu', 'n/a')}, {env.get('cpu_count', 'n/a')} cores, {env.get('os', 'n/a')}"],
        ["runtime", f"{e['backend']} {e['precision']}, threads {st.get('threads') or 'default'}"
                    + (f", {st['thread_pool']} thread pool" if st.get("thread_pool") else "")],
        ["versions", ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items()) + f", Python {env.get('python')}"],
    ]) + [""]
    lines += cost_lines(st)
    lines += _acceptance_section(report, plots) + _time_section(report, plots) + _equality_section(report)
    skipped = report["progress"]["skipped"]
    if skipped:
        lines += ["## Skipped questions", ""] + [f"- {s['question_id']} ({s['task']}): {s['reason']}" for s in skipped] + [""]
    lines += ["Per-question numbers (tokens/s per method, each turn's tokens, time and stop reason) are in "
              "`report.json`."]
    return "\n".join(lines) + "\n"


def _image(plots: dict[str, str], key: str, alt: str) -> list[str]:
    return [f"![{alt}]({plots[key]})", ""] if key in plots else []


def _acceptance_section(report, plots) -> list[str]:
    o, gamma = report["overall"], report["settings"]["gamma"]
    ws = [str(w) for w in range(1, gamma + 1)]
    rows = [[name] + [_num(v) for v in s["ctar"]] for name, s in list(report["by_task"].items()) + [("overall", o)]]
    lines = ["## Acceptance", "", "CTAR(w): over all rounds and windows of w consecutive drafts, the fraction of "
             "windows whose drafts were all accepted.", ""]
    lines += markdown_table(["task"] + [f"w={w}" for w in ws], rows) + [""] + _image(plots, "ctar", "CTAR curve")
    lines += ["Accepted drafts per round (0..gamma): " + ", ".join(map(str, o["accepted_histogram"])) +
              f" over {o['rounds']} rounds.", ""] + _image(plots, "accepted_histogram", "accepted lengths")
    lines += ["Acceptance by draft position (of the rounds that proposed draft i): " +
              ", ".join(f"{i}: {_num(v)}" for i, v in enumerate(o["accepted_by_position"], start=1)), ""]
    lines += _image(plots, "accepted_by_position", "acceptance by draft position")
    lines += _image(plots, "speedup", "speedup per category")
    return lines


def _time_section(report, plots) -> list[str]:
    rows = []
    for mode in ("ar", "kangaroo"):
        s = report["time_split"][mode]
        per_token = lambda key: _num(1000 * s[key] / s["new_tokens"] if s["new_tokens"] else None, "{:.1f}")
        rows.append([mode, _num(s["total_s"], "{:.1f}"), per_token("prefill_s"), per_token("draft_s"),
                     per_token("verify_s"), per_token("other_s")])
    lines = ["## Where the time goes", "", "Milliseconds per generated token (verify = deep passes; for AR every "
             "step is a shallow + deep pass and is counted as verify).", ""]
    return lines + markdown_table(["mode", "total s", "prefill", "draft", "verify", "other"], rows) + [""] + \
        _image(plots, "time_split", "time split")


def _equality_section(report) -> list[str]:
    eq = report["equality"]
    if eq.get("sampled"):
        return ["## Equality check", "", f"Not checked: {equality_line(report)[len('equality: not checked, '):]}. "
                "Kangaroo's speculative-sampling rule gives each token the distribution plain sampling gives it "
                "(tests/test_sampling.py); a run samples differently in each mode.", ""]
    lines = ["## Equality check", "", f"{eq['matched']} of {eq['turns']} turns: Kangaroo's tokens are identical to "
             f"AR's. A divergence is tolerated only where AR's top-1 minus top-2 logit at the first differing "
             f"position is below {report['settings']['near_tie_margin']:g} (a floating-point near-tie).", ""]
    for kind, cases in (("Near-ties", eq["near_ties"]), ("Mismatches (failures)", eq["mismatches"])):
        if cases:
            lines += [f"{kind}:", ""] + markdown_table(
                ["question", "task", "turn", "position", "margin", "kangaroo token", "AR token"],
                [[str(c["question_id"]), c["task"], str(c["turn"]), str(c["position"]),
                  _num(c["margin"], "{:.3g}"), str(c["kangaroo_token"]), str(c["ar_token"])] for c in cases]) + [""]
    return lines
