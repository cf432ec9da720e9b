"""The study report: Table 1 against scipy, every section, escaping, self-containment, a browser."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import QUICK_FIT, compose_config, noise_features
from scipy import stats

from her2study import __version__
from her2study.cohort.manifest import Cohort
from her2study.report import (
    SYNTHETIC_BANNER,
    Captioned,
    Heading,
    Html,
    Section,
    cohort_summary,
    compare_report,
    format_p,
    paper_report,
    search_design_items,
    search_report,
    write_report,
)
from her2study.report.browser import dump_dom, find_chromium, screenshot
from her2study.reporting import compare_with_paper
from her2study.results import evaluate_signatures, paired_delong
from her2study.split import block_split
from her2study.study import fit_signatures

EVIL = "<script>alert('x')</script>&"
EVIL_FEATURE = f"intra_{EVIL}"  # keeps the region prefix, so the Intra signature sees it
QUICK = [*QUICK_FIT, "selection.lasso_n_lambdas=12"]
SECTIONS = ["Cohort", "Design", "Selected features", "Results", "Figures", "Reviewer checklist"]


# ------------------------------------------------------------------------------- Table 1


@pytest.fixture
def clinical_table():
    rng = np.random.default_rng(3)
    n = 90
    y = np.r_[np.zeros(36, int), np.ones(n - 36, int)]
    age = np.round(rng.normal(52 + 3 * y, 11))
    er = np.clip(rng.normal(60 + 10 * y, 25), 0, 100)
    er[[3, 50]] = np.nan  # missing values are left out and counted
    rare = np.zeros(n, int)
    rare[[0, 1, 40]] = 1  # expected counts < 5 -> Fisher
    common = rng.integers(0, 2, n)  # large counts -> chi-squared (Yates)
    grade = rng.choice([1, 2, 3], size=n, p=[0.2, 0.5, 0.3])  # 3 levels -> chi-squared
    return pd.DataFrame(
        {"label": y, "age": age, "er_pct": er, "rare": rare, "common": common, "grade": grade},
        index=pd.Index([f"P{i}" for i in range(n)], name="case_id"),
    )


def _p(summary, variable):
    return summary.loc[summary["variable"] == variable, "p"].iloc[0]


def test_cohort_summary_matches_scipy(clinical_table):
    t = clinical_table
    s = cohort_summary(t, "label", ["age", "er_pct", "rare", "common", "grade"])
    g0, g1 = t[t.label == 0], t[t.label == 1]

    # continuous: Mann-Whitney U, median (Q1, Q3)
    assert _p(s, "age") == pytest.approx(
        stats.mannwhitneyu(g0.age, g1.age, alternative="two-sided").pvalue, rel=1e-12
    )
    assert _p(s, "er_pct") == pytest.approx(
        stats.mannwhitneyu(g0.er_pct.dropna(), g1.er_pct.dropna()).pvalue, rel=1e-12
    )
    row = s[(s.variable == "age")].iloc[0]
    q1, med, q3 = np.percentile(g1.age, [25, 50, 75])
    assert row["positive (n=54)"] == f"{med:.1f} ({q1:.1f}, {q3:.1f})"
    assert row["test"] == "Mann-Whitney U"
    missing = s[(s.variable == "er_pct") & (s.level == "missing")].iloc[0]
    assert missing["Overall (n=90)"] == "2"

    # 2x2 with an expected count < 5: Fisher's exact
    ct = pd.crosstab(t.rare, t.label).to_numpy()
    assert (stats.contingency.expected_freq(ct) < 5).any()
    assert _p(s, "rare") == pytest.approx(stats.fisher_exact(ct).pvalue, rel=1e-12)
    assert s.loc[s.variable == "rare", "test"].iloc[0] == "Fisher's exact"

    # 2x2 with large counts, and 3 x 2: chi-squared (Yates on 2x2, as R)
    ct = pd.crosstab(t.common, t.label).to_numpy()
    assert _p(s, "common") == pytest.approx(stats.chi2_contingency(ct).pvalue, rel=1e-12)
    ct = pd.crosstab(t.grade, t.label).to_numpy()
    assert _p(s, "grade") == pytest.approx(stats.chi2_contingency(ct).pvalue, rel=1e-12)
    assert s.loc[s.variable == "grade", "test"].iloc[0] == "Chi-squared"

    # n (%) per class and overall, p on the first level's row only
    rows = s[s.variable == "grade"]
    assert list(rows.level) == ["1", "2", "3"] and rows.p.iloc[1:].isna().all()
    n = int(((t.grade == 2) & (t.label == 0)).sum())
    assert rows.iloc[1]["negative (n=36)"] == f"{n} ({100 * n / 36:.1f}%)"


def test_cohort_summary_class_names_and_format_p(clinical_table):
    s = cohort_summary(clinical_table, "label", ["age"], class_names=("neg", "pos"))
    assert list(s.columns) == [
        "variable",
        "level",
        "neg (n=36)",
        "pos (n=54)",
        "Overall (n=90)",
        "p",
        "test",
    ]
    assert format_p(0.0004) == "<0.001" and format_p(0.0456) == "0.046"
    assert format_p(np.nan) == ""


# ------------------------------------------------------------------------- the fake study


@pytest.fixture(scope="module")
def study():
    """A small real study: the real fitting, evaluation and figure functions on noise."""
    from her2study.tasks.paper import make_figures

    cfg = compose_config("+exp=paper", *QUICK)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # weak clinical signal, layout notes
        return _fit_study(cfg, make_figures)


def _fit_study(cfg, make_figures):
    X, clinical, y = noise_features(n=100, p=12)
    X = X.rename(columns={"intra_f0": EVIL_FEATURE})
    rng = np.random.default_rng(2)
    clinical["node_positive"] = rng.integers(0, 2, len(y))
    table = clinical.assign(label=y)
    split = block_split(table, "label", test_size=0.3, seed=1)
    fits = fit_signatures(X, clinical, y, split, [1.0, 2.0], cfg)
    metrics = evaluate_signatures(fits, y, split, cfg)
    figures = make_figures(fits, y, split, cfg, "SYNTHETIC cohort (test)")
    return {
        "cfg": cfg,
        "table": table,
        "split": split,
        "fits": fits,
        "metrics": metrics,
        "comparison": compare_with_paper(metrics),
        "tests": paired_delong(fits, y, split),
        "figures": figures,
        "features": X,
    }


def _paper_report(study, out, synthetic=True, source="synthetic"):
    cols = ["age", "er_pct", "node_positive"]
    cohort = Cohort(table=study["table"][["label", *cols]], source=source, synthetic=synthetic)
    return paper_report(
        out,
        cfg=study["cfg"],
        cohort=cohort,
        split=study["split"],
        fits=study["fits"],
        metrics=study["metrics"],
        comparison=study["comparison"],
        tests=study["tests"],
        figures=study["figures"],
        clinical_columns=cols,
        features=study["features"],
    )


def _assert_self_contained(text):
    assert "<script" not in text.lower()
    urls = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", text, flags=re.I)
    external = [u for u in urls if not (u.startswith("data:") or u.startswith("#"))]
    assert not external, external[:5]
    assert not re.search(r"url\(|@import|https?://", text.split("<body>")[0])  # CSS offline


@pytest.fixture(scope="module")
def synthetic_report(study, tmp_path_factory):
    return _paper_report(study, tmp_path_factory.mktemp("paper"))


def test_paper_report_has_every_section(study, synthetic_report):
    text = synthetic_report.read_text(encoding="utf-8")
    assert synthetic_report.name == "report.html"
    for i, title in enumerate(SECTIONS, 1):
        assert f"{i}. {title}</h2>" in text
        assert re.search(rf'<a href="#s{i}-[a-z0-9-]+">{title}</a>', text)  # contents
    assert SYNTHETIC_BANNER in text and 'class="banner synthetic"' in text
    assert "paper: study report" in text and f"her2study {__version__}" in text
    # contents of each section
    for needle in (
        "HER2-zero (n=",  # Table 1
        "Mann-Whitney U",
        "Cases per set and class",  # design
        "stratified block randomisation",
        "IntraPeri 1 mm (radiomics)",  # selected features
        "paper AUC (95% CI)",  # Table 3 comparison
        "Paired DeLong tests",
        "ROC curves, training set",  # figures
        "Decision curves, test set",
        "LASSO cross-validation curve",
        "Nomogram",
        "Segmentation source",  # checklist
        "Pixel spacing source",
        "binWidth: 10",  # extractor params block
        "pyradiomics version",
        "Leakage controls",
        "events per variable",
        "Code version",
    ):
        assert needle in text, needle
    n_img = len(re.findall(r'<img class=fig alt="[^"]*" src="data:image/png;base64,', text))
    assert n_img == len(study["figures"])
    _assert_self_contained(text)
    assert synthetic_report.stat().st_size < 3_000_000
    assert not list(synthetic_report.parent.glob(".report.html.*"))  # no temp file left


def test_paper_report_escapes_feature_names(study, synthetic_report):
    intra = next(f for f in study["fits"] if f.name == "Intra")
    assert EVIL_FEATURE in intra.coefficients.index  # the planted feature was selected
    text = synthetic_report.read_text(encoding="utf-8")
    assert EVIL not in text and "<script" not in text
    assert "intra_&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;" in text


def test_paper_report_on_a_manifest_names_it(study, tmp_path):
    manifest = "/data/R&D <cohort>/manifest.csv"
    path = _paper_report(study, tmp_path, synthetic=False, source=manifest)
    text = path.read_text(encoding="utf-8")
    assert SYNTHETIC_BANNER not in text and "SYNTHETIC" not in text.split("<nav")[0]
    assert "Data: /data/R&amp;D &lt;cohort&gt;/manifest.csv" in text
    _assert_self_contained(text)


def test_write_report_blocks_escaping_and_atomic_rewrite(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    cases = pd.DataFrame({"case_id": [EVIL, "P2"], "auc": [0.8123, np.nan], "n": [3, 4]})
    sections = [
        Section(
            f"Odd <title> & {EVIL}",
            [
                f"paragraph {EVIL}",
                Heading(EVIL),
                cases,
                Captioned(fig, f"caption {EVIL}"),
                {"key <k>": "a\nb", "params": "setting:\n  binWidth: 10", EVIL: EVIL},
                Html("<p class=trusted>raw <b>html</b></p>"),
            ],
        )
    ]
    path = write_report(
        tmp_path / "r.html", title=f"T {EVIL}", source=EVIL, synthetic=False, sections=sections
    )
    text = path.read_text(encoding="utf-8")
    assert EVIL not in text and text.count("&lt;script&gt;") >= 8
    assert "<p class=trusted>raw <b>html</b></p>" in text
    assert '<td class="num">0.812</td>' in text and '<td class="num">-</td>' in text
    assert "a<br>b" in text and "<pre>setting:\n  binWidth: 10</pre>" in text
    assert text.count("data:image/png;base64,") == 1
    _assert_self_contained(text)
    before = path.stat().st_ino
    write_report(path, title="again", source="s", synthetic=True, sections=[])
    assert "again" in path.read_text() and path.stat().st_ino != before  # replaced, not edited
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]
    with pytest.raises(TypeError, match="report block of type object"):
        write_report(
            tmp_path / "x.html",
            title="t",
            source="s",
            synthetic=True,
            sections=[Section("s", [object()])],
        )
    assert not (tmp_path / "x.html").exists()


def test_search_and_compare_reports(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 3))
    fig.add_subplot().plot([0.5, 1, 2], [0.7, 0.8, 0.75], "o-")
    margins = pd.DataFrame(
        {
            "region": ["intra", "intra+ring1mm", "intra+ring2mm"],
            "kind": ["tumour", "tumour+ring", "tumour+ring"],
            "width_mm": [0.0, 1.0, 2.0],
            "cv_auc": [0.70, 0.78, 0.74],
            "cv_auc_ci_low": [0.62, 0.70, 0.66],
            "cv_auc_ci_high": [0.78, 0.86, 0.82],
            "test_auc": [0.72, 0.81, 0.74],
        }
    )
    paired = pd.DataFrame({"region": ["intra+ring1mm"], "cv_auc_diff": [0.08], "p": [0.03]})
    path = compare_report(
        tmp_path / "c",
        table=margins,
        figure=fig,
        source="SYNTHETIC",
        synthetic=True,
        experiment="paper <sweep>",
        paired=paired,
        note="training-side CV",
    )
    text = path.read_text()
    assert SYNTHETIC_BANNER in text and "paper &lt;sweep&gt;: which margin?" in text
    assert "outer edges 1, 2 mm" in text and text.count("data:image/png") == 1
    assert "descriptive" in text and "paired on the same folds" in text
    _assert_self_contained(text)

    folds = pd.DataFrame({"fold": [1, 2], "outer_auc": [0.8, 0.7], "hl_p": [0.2, 0.0001]})
    path = search_report(
        tmp_path / "s",
        title="search",
        source="/x/manifest.csv",
        synthetic=False,
        design=search_design_items(
            {
                "seed": 7,
                "search": {
                    "outer_folds": 5,
                    "outer_repeats": 2,
                    "inner_folds": 3,
                    "n_trials": 40,
                    "sampler": "tpe",
                    "n_startup_trials": 10,
                    "space": {"model": {"type": "categorical", "choices": ["svm", "ridge"]}},
                },
            },
            n_cases=90,
        ),
        tables={"outer_folds": folds},
        figures={"roc_nested_oof": fig, "ring_frequency": fig},
        checklist={"Seeds": "42"},
    )
    text = path.read_text()
    assert "5-fold stratified x 2 repeat(s)" in text and "40 per study" in text
    assert "model: {&#x27;type&#x27;: &#x27;categorical&#x27;" in text and "<td>7</td>" in text
    assert "Outer folds</h3>" in text and "&lt;0.001" in text
    assert "ROC curves, pooled outer folds" in text and text.count("<section id=") == 4
    assert "4. Reviewer checklist" in text and "Data: /x/manifest.csv" in text
    _assert_self_contained(text)


# ----------------------------------------------------------------------------- the browser


def test_report_renders_in_chromium(synthetic_report, tmp_path):
    if find_chromium() is None:
        pytest.skip("chromium is not on PATH (Debian: apt-get install chromium)")
    from PIL import Image

    png = tmp_path / "report.png"
    run = screenshot(synthetic_report, png, window=(1280, 2400))
    assert run.returncode == 0, run.stderr[-2000:]
    assert png.is_file() and png.stat().st_size > 30_000
    with Image.open(png) as im:
        assert im.size == (1280, 2400)
        colours = im.convert("RGB").resize((160, 300)).getcolors(maxcolors=1_000_000)
    assert len(colours) > 50  # text, tables and the banner, not a blank page
    assert not run.console_errors, run.console_errors

    dom = dump_dom(synthetic_report)
    assert dom.returncode == 0 and not dom.console_errors
    assert dom.stdout.count("<section id=") == len(SECTIONS)
    assert SYNTHETIC_BANNER in dom.stdout


def test_console_error_detection_works(tmp_path):
    if find_chromium() is None:
        pytest.skip("chromium is not on PATH (Debian: apt-get install chromium)")
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><p>x</p><script>undefined_function()</script>")
    run = screenshot(bad, tmp_path / "bad.png", window=(200, 200))
    assert any("Uncaught" in ln for ln in run.console_errors)
