"""Figures rendered once, as PNG bytes, and reused while their inputs are unchanged.

A study's figure is drawn by one of this package's plotting functions from plain inputs (arrays,
frames, strings). :func:`rendered_png` keys the PNG by the function's name, those inputs, the
code version and matplotlib's version (:func:`her2study.fitcache.content_key`) and keeps it in
the active fit cache; a warm re-run neither draws nor rasterises. The same bytes are written to
the run folder, embedded in the HTML report and logged to MLflow: one rendering, not three.
"""

from __future__ import annotations

import io

import numpy as np

from her2study.fitcache import active_fit_cache, content_key

from .dca import decision_curve
from .figures import plot_dca

FIGURE_DPI = 120  # the PNG files, the report's images and MLflow's figures alike


def figure_png(fig, dpi: int = FIGURE_DPI) -> bytes:
    """A matplotlib Figure as PNG bytes (tight box, white background)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def rendered_png(draw, *args, **kwargs) -> bytes:
    """PNG bytes of ``draw(*args, **kwargs)`` (a function returning a Figure), from the active
    fit cache when the function, its arguments, the code and matplotlib are those of a stored
    rendering; drawn and stored otherwise (always drawn without an active cache)."""
    cache = active_fit_cache()
    key = None
    if cache is not None:
        import matplotlib

        key = content_key(
            "figure_png",
            draw=f"{draw.__module__}.{draw.__qualname__}",
            args=list(args),
            kwargs=kwargs,
            matplotlib=matplotlib.__version__,
            dpi=FIGURE_DPI,
        )
        stored = cache.get(key)
        if stored is not None and "png" in stored[0]:
            return stored[0]["png"].tobytes()
    png = figure_png(draw(*args, **kwargs))
    if cache is not None:
        cache.put(key, {"png": np.frombuffer(png, dtype=np.uint8)}, {"kind": "png"})
    return png


def plot_decision_curves(y, probs: dict, thresholds, title=None, note=None):
    """Decision curves of the models ``probs`` (name -> probabilities) on ``y``: the net benefit
    table of :func:`~her2study.evaluation.decision_curve`, drawn by :func:`plot_dca`."""
    dca = decision_curve(y, probs, thresholds=thresholds)
    return plot_dca(dca, title=title, note=note)
