"""``--plot``: a PNG with one row per op and three panels per row, every provider side by side per size:
the absolute forward+backward time (median bar, p20-p80 whisker, log scale), the speed-up over the chosen
baseline, and the peak memory; the title names the device, the versions and the machine's load.
matplotlib is an optional extra: ``pip install 'fdiv-ops[bench]'``."""

from __future__ import annotations

from . import fmt
from .headline import case_label
from .providers import PROVIDERS
from .report import load_note

# One colour per provider in every panel and row (matplotlib's default cycle, in PROVIDERS order).
_COLOURS = dict(zip(PROVIDERS, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")))


def matplotlib_missing() -> str | None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "--plot needs matplotlib: pip install 'fdiv-ops[bench]' (or pip install matplotlib)"
    return None


def _suptitle(head: dict) -> str:
    versions = head["versions"]
    first = (
        f"{head['device_name']}, {head['dtype']}, preset {head['preset']}, torch {versions['torch']}, "
        f"fdiv_ops {versions['fdiv_ops']}, {head['created_utc']}"
    )
    second = f"device copy bandwidth {fmt.bandwidth(head['copy_gbps'])}"
    load = load_note(head)
    if load:
        second += f"; {load}"
    if not head.get("complete", True):
        second += "; INCOMPLETE RUN (cut short)"
    return f"{first}\n{second}"


def _whiskers(record: dict) -> tuple[float, float]:
    """(median - p20, p80 - median) of the fwd+bwd time: matplotlib's asymmetric error bar."""
    return record["fwd_bwd_ms"] - record["fwd_bwd_p20_ms"], record["fwd_bwd_p80_ms"] - record["fwd_bwd_ms"]


def _bars(ax, sizes, names, values, labels, errors=None):
    """Grouped bars: one group per size, one bar per provider; ``values[name][size]`` may be missing."""
    width = 0.8 / max(len(names), 1)
    for k, name in enumerate(names):
        xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(sizes))]
        heights = [values[name].get(s) for s in sizes]
        kept = [(x, h, s) for x, h, s in zip(xs, heights, sizes) if h is not None]
        if not kept:
            continue
        yerr = None
        if errors is not None:
            yerr = [[errors[name][s][0] for _, _, s in kept], [errors[name][s][1] for _, _, s in kept]]
        xs_kept, heights_kept = [x for x, _, _ in kept], [h for _, h, _ in kept]
        colour = _COLOURS.get(name)
        bars = ax.bar(xs_kept, heights_kept, width, label=name, yerr=yerr, capsize=2, color=colour)
        ax.bar_label(bars, labels=[labels[name][s] for _, _, s in kept], fontsize=6, rotation=90, padding=2)
    ax.set_xticks(range(len(sizes)), sizes, fontsize=7)
    ax.margins(y=0.25)


def write_png(records: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    head, results = records[0], [r for r in records[1:] if r["fwd_bwd_ms"] is not None]
    baseline = head.get("baseline", "torch")
    ops = list(dict.fromkeys(r["op"] for r in results)) or ["(no results)"]
    fig, axes = plt.subplots(len(ops), 3, figsize=(16, 3.8 * len(ops) + 0.8), squeeze=False)
    for row, op in enumerate(ops):
        mine = [r for r in results if r["op"] == op]
        sizes = list(dict.fromkeys(case_label(r) for r in mine))
        names = list(dict.fromkeys(r["provider"] for r in mine))
        by = {n: {case_label(r): r for r in mine if r["provider"] == n} for n in names}
        ax_time, ax_speed, ax_mem = axes[row]

        times = {n: {s: r["fwd_bwd_ms"] for s, r in by[n].items()} for n in names}
        spread = {n: {s: _whiskers(r) for s, r in by[n].items()} for n in names}
        labels = {n: {s: fmt.time_ms(ms) for s, ms in times[n].items()} for n in names}
        _bars(ax_time, sizes, names, times, labels, spread)
        ax_time.set_yscale("log")
        ax_time.set_ylabel("ms (log)")
        ax_time.set_title(f"{op}: fwd+bwd time, median and p20–p80", fontsize=9)

        key = f"speedup_vs_{baseline}"
        speed = {n: {s: r.get(key) for s, r in by[n].items() if r.get(key) is not None} for n in names}
        _bars(ax_speed, sizes, names, speed, {n: {s: fmt.speedup(v) for s, v in speed[n].items()} for n in names})
        ax_speed.axhline(1.0, color="grey", linewidth=0.8)
        ratios = [v for n in names for v in speed[n].values() if v > 0]
        if ratios and max(ratios) / min(ratios) > 30:  # one provider 100x off would flatten the others
            ax_speed.set_yscale("log")
        title = f"{op}: fwd+bwd speed-up over {baseline} (> 1: faster)"
        if not any(speed[n] for n in names):
            title = f"{op}: no {baseline} provider ran for this op"
        ax_speed.set_title(title, fontsize=9)

        memory = {n: {s: r["peak_mem_mb"] for s, r in by[n].items() if r["peak_mem_mb"] is not None} for n in names}
        _bars(ax_mem, sizes, names, memory, {n: {s: fmt.mib(v) for s, v in memory[n].items()} for n in names})
        ax_mem.set_ylim(bottom=0)
        ax_mem.set_title(f"{op}: peak memory of one fwd+bwd (MiB)", fontsize=9)
        ax_time.legend(fontsize=7, loc="upper left")
    fig.suptitle(_suptitle(head), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))  # room for the two-line title
    fig.savefig(path, dpi=100)
    plt.close(fig)
