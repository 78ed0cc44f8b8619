"""``--plot``: a PNG with, per op, the fwd+bwd speed-up over eager and the peak memory, per size and
provider (matplotlib, an optional extra: ``pip install 'fdiv-ops[bench]'``)."""

from __future__ import annotations


def matplotlib_missing() -> str | None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "--plot needs matplotlib: pip install 'fdiv-ops[bench]' (or pip install matplotlib)"
    return None


def _label(record: dict) -> str:
    return "x".join(map(str, record["shape"])) + "".join(f" {v}" for v in record["params"].values())


def write_png(records: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    head, results = records[0], [r for r in records[1:] if r["fwd_bwd_ms"] is not None]
    ops = list(dict.fromkeys(r["op"] for r in results)) or ["(no results)"]
    fig, axes = plt.subplots(len(ops), 2, figsize=(12, 3.6 * len(ops)), squeeze=False)
    for row, op in enumerate(ops):
        mine = [r for r in results if r["op"] == op]
        sizes = list(dict.fromkeys(_label(r) for r in mine))
        names = list(dict.fromkeys(r["provider"] for r in mine))
        width = 0.8 / max(len(names), 1)
        for column, (key, label) in enumerate(
            (("speedup_vs_eager", "fwd+bwd speed-up over eager (x)"), ("peak_mem_mb", "peak memory (MiB)"))
        ):
            ax = axes[row][column]
            for k, name in enumerate(names):
                values = {_label(r): r[key] for r in mine if r["provider"] == name}
                xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(sizes))]
                bars = ax.bar(xs, [values.get(s) or 0.0 for s in sizes], width, label=name)
                ax.bar_label(bars, fmt="%.3g", fontsize=7)
            ax.set_xticks(range(len(sizes)), sizes, rotation=15, fontsize=8)
            ax.set_title(f"{op}: {label}", fontsize=10)
            if key == "speedup_vs_eager":
                ax.axhline(1.0, color="grey", linewidth=0.8)
            ax.legend(fontsize=8)
    fig.suptitle(f"{head['device_name']}, {head['dtype']}, preset {head['preset']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
