"""The roofline chart (matplotlib, an optional extra: ``pip install 'capcalc[plot]'``).

Log-log axes: arithmetic intensity (FLOP/byte) across, attained FLOP/s up. The
bandwidth slope (FLOP/s = bandwidth x intensity) meets a flat roof per dtype at that
dtype's ridge point; decode points across batch sizes walk up the slope towards the
ridge, the prefill point sits on the flat roof. Points left of the compute dtype's
ridge (shaded) are memory-bound. matplotlib is imported only inside
:func:`save_roofline_chart`, so every other command works without it.
"""

from __future__ import annotations

import io
from pathlib import Path

from capcalc.core.errors import CapcalcError
from capcalc.core.fileio import write_atomic
from capcalc.core.inputs import excerpt

#: figure size in inches and resolution: PNG files are 1000 x 600 pixels
FIGSIZE = (10.0, 6.0)
DPI = 100
INSTALL_HINT = "plot needs matplotlib: pip install 'capcalc[plot]' (or pip install matplotlib)"
FORMATS = (".png", ".svg")


def check_plot_path(path: str | Path) -> Path:
    """Validate a chart's file name before any work: a .png or .svg name, matplotlib importable."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise CapcalcError(f"plot: {excerpt(str(path))} must end in .png or .svg", parameter="plot")
    require_matplotlib()
    return path


def require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CapcalcError(INSTALL_HINT, parameter="plot") from None


def save_roofline_chart(path: str | Path, result, points) -> Path:
    """Draw the roofline of ``result`` (a :class:`capcalc.perf.roofline.RooflineResult`) with
    ``points`` (:func:`capcalc.perf.roofline.chart_points`) and write it atomically."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    bandwidth = result.bandwidth_bytes_per_s
    intensities = [p.intensity for p in points] + list(result.ridge_points.values())
    x_lo = min(intensities) / 4
    x_hi = max(intensities) * 4
    by_peak: dict[float, list[str]] = {}
    for dtype, ridge_point in result.ridge_points.items():  # dtypes sharing a peak share a roof
        by_peak.setdefault(ridge_point * bandwidth, []).append(dtype)
    roofs = sorted(by_peak.items(), reverse=True)
    for peak, dtypes in roofs:
        ridge = peak / bandwidth
        mine = result.compute_dtype in dtypes
        ax.plot(
            [x_lo, ridge, x_hi],
            [x_lo * bandwidth, peak, peak],
            "-" if mine else ":",
            color="0.25",
            linewidth=2.2 if mine else 1.0,
        )
        ax.annotate(
            f"{'/'.join(dtypes)} {peak / 1e12:,.0f} TFLOP/s (ridge {ridge:,.0f})",
            (x_hi, peak),
            textcoords="offset points",
            xytext=(-4, 3),
            ha="right",
            fontsize=8,
        )
    ridge = result.ridge_point_flop_per_byte
    ax.axvspan(x_lo, ridge, color="tab:blue", alpha=0.06)
    ax.axvline(ridge, color="tab:red", linestyle="--", linewidth=1)
    ax.text(
        ridge,
        x_lo * bandwidth,
        f" ridge {ridge:,.0f} FLOP/B\n ({result.compute_dtype})",
        color="tab:red",
        fontsize=8,
    )
    ax.text(x_lo * 1.2, roofs[-1][0] * 0.6, "memory-bound", color="tab:blue", fontsize=9)
    decode = [p for p in points if p.phase == "decode"]
    prefill = [p for p in points if p.phase == "prefill"]
    ax.plot(
        [p.intensity for p in decode],
        [p.flops_per_s for p in decode],
        "o-",
        color="tab:orange",
        label="decode",
    )
    for p in decode:
        ax.annotate(
            p.label.split("=")[-1],
            (p.intensity, p.flops_per_s),
            textcoords="offset points",
            xytext=(4, -10),
            fontsize=7,
        )
    ax.plot(
        [p.intensity for p in prefill],
        [p.flops_per_s for p in prefill],
        "s",
        color="tab:green",
        markersize=9,
        label=prefill[0].label if prefill else "prefill",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_lo, x_hi)
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("attained FLOP/s (datasheet roofline)")
    ax.set_title(
        f"{result.model} on {result.gpu}: decode batch 1..{decode[-1].label.split('=')[-1] if decode else ''} "
        f"at ctx {result.ctx}, {result.weight_dtype} weights, tp={result.tp}"
    )
    ax.grid(True, which="both", alpha=0.2)
    ax.legend(loc="lower right", title="decode labels: batch size", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    """Render into memory, then write the file whole or not at all."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lower().lstrip("."), dpi=DPI)
    return write_atomic(path, buffer.getvalue())
