"""Figures: returned objects, legends, reference lines and notes (Agg, no pyplot)."""

import io
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from her2study.evaluation import (
    auc_delong,
    decision_curve,
    plot_calibration,
    plot_coefficient_paths,
    plot_coefficients,
    plot_dca,
    plot_lasso_path,
    plot_roc,
)

GOLDEN = Path(__file__).parent / "data" / "golden"
NOTE = "SYNTHETIC DATA"


@pytest.fixture(scope="module")
def asah():
    df = pd.read_csv(GOLDEN / "asah.csv")
    return df, (df["outcome"] == "Poor").astype(int).to_numpy()


def _texts(fig):
    return [t.get_text() for t in fig.texts]


def _check_png(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=60)
    assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_roc_legend_band_and_note(asah):
    df, y = asah
    fig = plot_roc(
        {"S100B": (y, df["s100b"]), "WFNS": (y, df["wfns"])}, n_boot=50, title="ROC", note=NOTE
    )
    assert isinstance(fig, Figure) and plt.get_fignums() == []
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    res = auc_delong(y, df["s100b"])
    assert labels[0] == (
        f"S100B: AUC {res.auc:.3f} (95% CI {res.ci_low:.3f}\u2013{res.ci_high:.3f})"
    )
    assert labels[1].startswith("WFNS: AUC 0.824")
    assert len(ax.collections) == 2  # one bootstrap band per model
    assert ax.get_title() == "ROC" and NOTE in _texts(fig)
    # the drawn curve ends at (1, 1) and starts at (0, 0)
    x, yy = ax.lines[0].get_data()
    assert (x[0], yy[0], x[-1], yy[-1]) == (0, 0, 1, 1)
    _check_png(fig)


def test_plot_roc_without_ci(asah):
    df, y = asah
    fig = plot_roc({"NDKA": (y, df["ndka"])}, ci=False, band=None)
    assert fig.axes[0].get_legend().get_texts()[0].get_text() == "NDKA: AUC 0.612"
    assert len(fig.axes[0].collections) == 0 and fig.texts == []
    with pytest.raises(ValueError, match="single class"):
        plot_roc({"bad": ([1, 1], [0.2, 0.3])})


def test_plot_calibration():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.02, 0.98, 400)
    y = rng.binomial(1, p)
    fig = plot_calibration({"train": (y, p), "test": (y[:200], p[:200])}, note=NOTE)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "Ideal" and labels[1].startswith("train (Brier")
    assert NOTE in _texts(fig)
    _check_png(fig)
    # bins with observed rate 0 (Wilson lower bound 0) must not break the error bars
    df = pd.read_csv(GOLDEN / "dca_cancer_dx.csv")
    _check_png(plot_calibration({"marker": (df["cancer"], df["cancerpredmarker"])}))


def test_plot_dca_from_decision_curve():
    df = pd.read_csv(GOLDEN / "dca_cancer_dx.csv")
    dc = decision_curve(df["cancer"], {"Model": df["cancerpredmarker"]})
    fig = plot_dca(dc, title="DCA", note=NOTE)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "Treat All",
        "Treat None",
        "Model",
    ]
    assert ax.get_ylim()[1] > df["cancer"].mean()  # treat-all at threshold 0 is visible
    fig2 = plot_dca(dc, y="net_intervention_avoided")
    assert len(fig2.axes[0].lines) == 1  # reference strategies omitted
    with pytest.raises(ValueError, match="lacks columns"):
        plot_dca(dc.drop(columns="net_benefit"))
    _check_png(fig)


def test_plot_lasso_path_marks_min_and_1se():
    lam = np.exp(np.linspace(-6, 0, 40))
    mean = (np.log(lam) + 3.0) ** 2 / 10 + 1.0  # minimum at log(lambda) = -3
    se = np.full(40, 0.05)
    cv = {"lambda": lam, "mean": mean, "se": se, "n_nonzero": np.arange(40, 0, -1)}
    fig = plot_lasso_path(cv, note=NOTE)
    ax = fig.axes[0]
    vlines = [ln.get_xdata()[0] for ln in ax.lines if ln.get_linestyle() in ("--", ":")]
    log_lam = np.log(lam)
    i_min = int(np.argmin(mean))
    ok = mean <= mean[i_min] + se[i_min]
    assert vlines == pytest.approx([log_lam[i_min], log_lam[ok].max()])
    assert vlines[1] > vlines[0]
    # explicit values win, AUC-type metric (higher is better) is accepted
    fig2 = plot_lasso_path(
        pd.DataFrame({"log_lambda": log_lam, "mean": -mean}),
        lambda_min=np.exp(-2.0),
        higher_is_better=True,
        ylabel="AUC",
    )
    assert fig2.axes[0].lines[-1].get_xdata()[0] == pytest.approx(-2.0)
    with pytest.raises(ValueError, match="lambda"):
        plot_lasso_path({"mean": mean})
    _check_png(fig)


def test_plot_coefficient_paths():
    lam = np.exp(np.linspace(-5, 0, 20))
    coefs = np.outer(1 - np.linspace(0, 1, 20), [0.5, -0.3, 0.1])
    fig = plot_coefficient_paths(
        lam, pd.DataFrame(coefs, columns=["a", "b", "c"]), lambda_min=np.exp(-3)
    )
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["a", "b", "c"]
    with pytest.raises(ValueError, match="shape"):
        plot_coefficient_paths(lam[:5], coefs)


def test_plot_coefficients_bars_and_colours():
    coef = pd.Series(
        {
            "glcm_contrast": 0.8,
            "shape_sphericity": -0.4,
            "firstorder_mean": 0.0,
            "ngtdm_busyness": 0.2,
        }
    )
    fig = plot_coefficients(coef, title="LASSO", note=NOTE)
    ax = fig.axes[0]
    bars = ax.patches
    assert len(bars) == 3  # zero coefficient dropped
    widths = [b.get_width() for b in bars]
    assert widths == sorted(widths)
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    assert ticks == ["shape_sphericity", "ngtdm_busyness", "glcm_contrast"]
    assert bars[0].get_facecolor() != bars[-1].get_facecolor()
    assert len(plot_coefficients(np.array([1.0, -2.0])).axes[0].patches) == 2
    _check_png(fig)
