"""How the bench writes numbers for people: a unit on every quantity, three significant digits, never an
exponent for a time or a size (``1.01 s``, not ``1e+03``; ``721 ms (698-1010)``, not ``721-1.01e+03``).

Standard library only: benchmarks/make_readme_table.py loads this file by path, without importing torch.
``ascii=True`` swaps µ, × and – for us, x and - (a terminal or pipe whose encoding lacks them).
"""

from __future__ import annotations

import math

DASH = "-"  # a missing value


def sig(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits in positional notation: 0.00123, 2.53, 25.3, 253, 1013."""
    if value is None or not math.isfinite(value):
        return DASH
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    text = f"{value:.{decimals}f}"
    # Rounding can add a digit (9.996 -> "10.00"): drop the decimal it made one too many.
    if decimals > 0 and len(text.lstrip("-").replace(".", "").lstrip("0")) > digits:
        text = f"{value:.{decimals - 1}f}"
    return text


def _time_unit(ms: float, ascii: bool) -> tuple[float, str]:
    """(scale from ms, unit) that puts ``ms`` in [1, 1000) after rounding to three digits (999.7 ms: 1.00 s)."""
    if ms < 0.9995:
        return 1e3, "us" if ascii else "µs"
    if ms < 999.5:
        return 1.0, "ms"
    return 1e-3, "s"


def time_ms(ms: float | None, ascii: bool = False) -> str:
    """A duration given in milliseconds: ``253 µs``, ``4.65 ms``, ``1.01 s``."""
    if ms is None or not math.isfinite(ms):
        return DASH
    scale, unit = _time_unit(ms, ascii)
    return f"{sig(ms * scale)} {unit}"


def time_spread(median_ms: float | None, p20_ms: float | None, p80_ms: float | None, ascii: bool = False) -> str:
    """The median with its p20-p80 range, in the median's unit where the range fits it: ``253 µs (219–272)``,
    else each bound with its own unit: ``189 µs (167 µs–19.7 ms)``."""
    if median_ms is None or not math.isfinite(median_ms):
        return DASH
    if p20_ms is None or p80_ms is None:
        return time_ms(median_ms, ascii)
    scale, unit = _time_unit(median_ms, ascii)
    dash = "-" if ascii else "–"
    if _time_unit(p20_ms, ascii)[1] == unit == _time_unit(p80_ms, ascii)[1]:
        return f"{sig(median_ms * scale)} {unit} ({sig(p20_ms * scale)}{dash}{sig(p80_ms * scale)})"
    return f"{sig(median_ms * scale)} {unit} ({time_ms(p20_ms, ascii)}{dash}{time_ms(p80_ms, ascii)})"


def speedup(value: float | None, ascii: bool = False) -> str:
    """A ratio of times: ``2.71×``, ``16.2×``, ``0.45×``."""
    if value is None or not math.isfinite(value):
        return DASH
    return sig(value) + ("x" if ascii else "×")


def mib(value: float | None) -> str:
    """Memory given in MiB: ``4.00 MiB``, ``188 MiB``, ``8.18 GiB``; a peak growth below 0.01 MiB is 0."""
    if value is None or not math.isfinite(value):
        return DASH
    if value < 0.01:  # RSS growth can read a page below the baseline: that is no growth
        return "0 MiB"
    if value >= 1024:
        return f"{sig(value / 1024)} GiB"
    return f"{sig(value)} MiB"


def bandwidth(gbps: float | None) -> str:
    """``66.4 GB/s``, ``2.95 TB/s``, ``312 MB/s`` (decimal units, as bandwidths are quoted)."""
    if gbps is None or not math.isfinite(gbps):
        return DASH
    for scale, unit in ((1e-3, "TB/s"), (1.0, "GB/s"), (1e3, "MB/s")):
        if gbps * scale >= 0.9995:
            return f"{sig(gbps * scale)} {unit}"
    return f"{sig(gbps * 1e6)} kB/s"


def percent(fraction: float | None) -> str:
    """``73%``, ``4.2%``, ``<0.1%``."""
    if fraction is None or not math.isfinite(fraction):
        return DASH
    if fraction < 0.001:
        return "<0.1%"
    return f"{sig(100 * fraction, 2) if fraction < 0.1 else round(100 * fraction)}%"


def rel_err(value: float | None) -> str:
    """A relative error: ``4.5e-7``, ``0``; inf when the output was not finite where the oracle's was."""
    if value is None:
        return DASH
    if math.isinf(value):
        return "inf"
    if value == 0:
        return "0"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def bandwidth_and_roof(gbps: float | None, copy_frac: float | None) -> str:
    """``66.4 GB/s (70%)``: achieved bandwidth and its fraction of a same-size device copy's."""
    if gbps is None:
        return DASH
    return bandwidth(gbps) + ("" if copy_frac is None else f" ({percent(copy_frac)})")
