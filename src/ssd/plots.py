"""Figures of evaluation results (matplotlib, an optional dependency, imported only when drawing).

Figures are drawn on matplotlib's Agg canvas directly (``matplotlib.figure.Figure`` + ``FigureCanvasAgg``), so
nothing here selects or changes the global pyplot backend, and no display is needed.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ssd.errors import SSDError
from ssd.metrics import VOC07_RECALL_THRESHOLDS, VOCResult

__all__ = ["plot_pr_curves"]


def _import_matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise SSDError(
            "plots need matplotlib: pip install matplotlib (or pip install 'ssd-detector[eval]')"
        ) from None
    return Figure, FigureCanvasAgg


def plot_pr_curves(voc_result: VOCResult, path: str | Path, *, title: str | None = None, dpi: int = 100) -> Path:
    """Write a PNG grid of per-class precision/recall curves, the AP in each panel's title.

    Each panel shows the raw curve (one point per counted detection, in score order) and the monotone
    precision envelope; for ``voc07`` results also the 11 interpolated points. A class without non-difficult
    objects has an empty panel saying so. Creates the parent folder; returns ``path``.

    Raises:
        SSDError: when matplotlib is missing or the file cannot be written.
    """
    Figure, FigureCanvasAgg = _import_matplotlib()
    path = Path(path)
    names = list(voc_result.ap)
    n = max(len(names), 1)
    cols = min(5, n) if n > 4 else n
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3.0 * cols, 2.7 * rows + 0.6), dpi=dpi)
    FigureCanvasAgg(fig)
    map_text = "n/a" if math.isnan(voc_result.mAP) else f"{voc_result.mAP:.4f}"
    fig.suptitle(title or f"Precision/recall per class ({voc_result.method}, IoU {voc_result.iou_threshold:g}): "
                 f"mAP {map_text}")  # fmt: skip
    for k, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, k + 1)
        ap = voc_result.ap[name]
        curve = voc_result.curves.get(name)
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.05)
        ax.grid(True, alpha=0.3)
        if ap is None or curve is None:
            ax.set_title(f"{name}: no AP", fontsize=9)
            ax.text(0.5, 0.5, "no non-difficult\nobjects", ha="center", va="center", fontsize=8, color="grey")
        else:
            ax.set_title(f"{name}: AP {ap:.3f}", fontsize=9)
            rec, prec = np.asarray(curve.recall), np.asarray(curve.precision)
            if rec.size:
                envelope = np.maximum.accumulate(prec[::-1])[::-1]
                marker = "." if rec.size < 30 else None  # short curves would otherwise hide on the frame
                ax.plot(rec, prec, linewidth=0.8, color="tab:blue", alpha=0.6, marker=marker, markersize=4)
                # The interpolated precision: envelope[i] on (rec[i-1], rec[i]], drawn from recall 0.
                ax.step(np.r_[0.0, rec], np.r_[envelope[:1], envelope], where="pre", linewidth=1.2, color="tab:blue")
                if voc_result.method == "voc07":
                    t = np.array(VOC07_RECALL_THRESHOLDS)
                    first = np.searchsorted(rec, t, side="left")
                    p = np.where(first < rec.size, envelope[np.minimum(first, rec.size - 1)], 0.0)
                    ax.plot(t, p, "o", markersize=2.5, color="tab:orange")
            else:
                ax.text(0.5, 0.5, "no detections", ha="center", va="center", fontsize=8, color="grey")
        if k % cols == 0:
            ax.set_ylabel("precision", fontsize=8)
        if k >= (rows - 1) * cols:
            ax.set_xlabel("recall", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    except OSError as e:
        raise SSDError(f"cannot write {path}: {e.strerror or e}") from e
    return path
