"""PNG plots of a benchmark report (rendered from the report dict, so they can be redrawn from report.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PLOTS = {
    "speedup": "speedup.png",
    "ctar": "ctar.png",
    "accepted_histogram": "accepted_histogram.png",
    "accepted_by_position": "accepted_by_position.png",
    "time_split": "time_split.png",
}


def write_plots(report: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """Draw every plot the report has data for; returns {plot: file name} of those written."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for key, draw in (("speedup", _speedup), ("ctar", _ctar), ("accepted_histogram", _histogram),
                      ("accepted_by_position", _by_position), ("time_split", _time_split)):
        fig, ax = plt.subplots(figsize=(7, 4))
        try:
            if draw(report, ax):
                fig.tight_layout()
                fig.savefig(out_dir / PLOTS[key], dpi=110)
                written[key] = PLOTS[key]
        finally:
            plt.close(fig)
    return written


def _title(report: dict[str, Any], what: str) -> str:
    e = report["engine"]
    return f"{what}: {e['source_model']}, {e['backend']} {e['precision']}"


def _speedup(report, ax) -> bool:
    names = [t for t, s in report["by_task"].items() if s["speedup"] is not None]
    if not names or report["overall"]["speedup"] is None:
        return False
    values = [report["by_task"][t]["speedup"] for t in names] + [report["overall"]["speedup"]]
    labels = names + ["overall"]
    bars = ax.bar(labels, values, color=["tab:blue"] * len(names) + ["tab:orange"])
    ax.bar_label(bars, fmt="%.2fx")
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_ylabel("speedup over AR (mean tok/s ratio)")
    ax.set_title(_title(report, "Kangaroo speedup"))
    ax.tick_params(axis="x", rotation=20)
    return True


def _ctar(report, ax) -> bool:
    curve = report["overall"]["ctar"]
    if not any(v is not None for v in curve):
        return False
    ws = list(range(1, len(curve) + 1))
    for task, s in report["by_task"].items():
        ax.plot(ws, [float("nan") if v is None else v for v in s["ctar"]], marker=".", alpha=0.5, label=task)
    ax.plot(ws, [float("nan") if v is None else v for v in curve], marker="o", color="black", linewidth=2.5,
            label="overall")
    ax.set_xlabel("window w (consecutive drafts)")
    ax.set_ylabel("CTAR(w)")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(ws)
    ax.legend(fontsize=8)
    ax.set_title(_title(report, "CTAR"))
    return True


def _histogram(report, ax) -> bool:
    counts = report["overall"]["accepted_histogram"]
    if not sum(counts):
        return False
    bars = ax.bar(range(len(counts)), counts)
    ax.bar_label(bars)
    ax.set_xlabel("drafts accepted in a round")
    ax.set_ylabel("rounds")
    ax.set_xticks(range(len(counts)))
    ax.set_title(_title(report, "Accepted lengths"))
    return True


def _by_position(report, ax) -> bool:
    rates = report["overall"]["accepted_by_position"]
    if not any(v is not None for v in rates):
        return False
    positions = list(range(1, len(rates) + 1))
    ax.bar(positions, [0.0 if v is None else v for v in rates])
    ax.set_xlabel("draft position i (rounds that proposed draft i)")
    ax.set_ylabel("fraction accepted")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(positions)
    ax.set_title(_title(report, "Acceptance by draft position"))
    return True


def _time_split(report, ax) -> bool:
    split = report["time_split"]
    if not all(split[m]["new_tokens"] for m in ("kangaroo", "ar")):
        return False
    modes = ["ar", "kangaroo"]
    left = [0.0, 0.0]
    for phase, color in (("prefill_s", "tab:grey"), ("draft_s", "tab:green"), ("verify_s", "tab:blue"),
                         ("other_s", "tab:orange")):
        ms = [1000 * split[m][phase] / split[m]["new_tokens"] for m in modes]
        ax.barh(modes, ms, left=left, color=color, label=phase[:-2])
        left = [a + b for a, b in zip(left, ms)]
    ax.set_xlabel("ms per generated token (verify = deep passes; AR: every step)")
    ax.legend(fontsize=8)
    ax.set_title(_title(report, "Time split"))
    return True
