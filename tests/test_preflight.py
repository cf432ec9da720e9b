"""The checks made before any extraction or fit (her2study.preflight): all problems at once,
class counts of every CV level, the search space adapted to a features table, class names and
the paper's reference in one place, results written as one set."""

import logging

import numpy as np
import pandas as pd
import pytest
from conftest import noise_features

from her2study.cohort.manifest import CohortError
from her2study.preflight import check_paper_folds, check_search_folds
from her2study.reporting import compare_with_paper, paper_reference_on
from her2study.tasks.common import cohort_and_features, result_set

QUICK = [
    "execution.progress=false",
    "extractor=fast",
    "tracking=off",
    "evaluation.bootstrap_reps=0",
]
NAMES = {0: "benign", 1: "malignant"}


def _plain_table(path, n=60, clinical=False):
    """A features table whose columns have no region prefix (one region), as public tables."""
    X, clin, y = noise_features(n=n, p=4)
    X = X[[c for c in X.columns if c.startswith("intra_")]]
    X.columns = [c.removeprefix("intra_") for c in X.columns]
    table = (X.join(clin) if clinical else X).assign(label=y).reset_index()
    table.to_csv(path, index=False)
    return path


def test_every_problem_is_listed_at_once(make_cohort, tmp_path, monkeypatch, compose):
    """A broken params file and a missing image: one error naming both, before any work."""
    from test_cohort import _break

    (tmp_path / "params.yaml").write_text("setting: [binWidth: 5\n")
    m = make_cohort(n=6, extra=_break("missing_file"))
    monkeypatch.chdir(tmp_path)
    cfg = compose(
        *QUICK,
        "+exp=paper",
        "data=manifest",
        f"data.manifest={m}",
        f"extractor.params_file={tmp_path / 'params.yaml'}",
    )
    with pytest.raises(CohortError) as info:
        cohort_and_features(cfg)
    text = str(info.value)
    assert "2 problem(s)" in text
    assert "cannot read the pyradiomics params file" in text and "file not found" in text
    assert not (tmp_path / ".her2study_cache").exists()  # nothing extracted


def test_data_problems_together(tmp_path, monkeypatch, compose):
    """Split, clinical and fold problems of one features table, in one message."""
    X, clin, y = noise_features(n=60, p=3)
    X.join(clin.drop(columns=["age"])).assign(label=y, split="train").reset_index().to_csv(
        tmp_path / "f.csv", index=False
    )
    monkeypatch.chdir(tmp_path)
    cfg = compose(
        *QUICK,
        "+exp=paper",
        "data=features",
        f"data.features_table={tmp_path / 'f.csv'}",
        "data.clinical_columns=[er_pct]",
        "model.clinical.columns=[er_pct,bmi]",
    )
    with pytest.raises(CohortError) as info:
        cohort_and_features(cfg)
    text = str(info.value)
    # balance_on names every column of the file and how to switch matching off
    assert "split.balance_on='age' is not a column of f.csv" in text
    assert "'peri2mm_f2'" in text and "split.balance_on=null" in text
    assert "model.clinical.columns names ['bmi']" in text


def test_split_column_all_train(tmp_path, monkeypatch, compose):
    X, clin, y = noise_features(n=60, p=3)
    X.join(clin).assign(label=y, split="train").reset_index().to_csv(
        tmp_path / "f.csv", index=False
    )
    monkeypatch.chdir(tmp_path)
    cfg = compose(
        *QUICK,
        "+exp=paper",
        "data=features",
        f"data.features_table={tmp_path / 'f.csv'}",
        "split.method=column",
    )
    with pytest.raises(CohortError, match="has no test cases .all 60 are 'train'"):
        cohort_and_features(cfg)


def _y(n_pos, n_neg):
    ids = [f"c{i}" for i in range(n_pos + n_neg)]
    return pd.Series([1] * n_pos + [0] * n_neg, index=ids)


@pytest.mark.parametrize(
    "n_pos,lasso,cv,fragment",
    [
        (20, 10, 5, None),  # 20 - 4 = 16 per fold: enough
        (12, 10, 5, "keeps about 8 case(s) of class malignant; selection.lasso_cv=10 inside"),
        (8, 10, 5, "training set has 6 case(s) of class malignant; selection.lasso_cv=10"),
        (3, 2, 5, "evaluation.cv_folds=5 needs at least 5 per class"),
    ],
)
def test_paper_fold_levels(compose, n_pos, lasso, cv, fragment):
    cfg = compose("+exp=paper", f"selection.lasso_cv={lasso}", f"evaluation.cv_folds={cv}")
    y = _y(n_pos, 40)
    split = pd.Series("train", index=y.index)
    split.iloc[[0, 1, -1, -2]] = "test"  # both classes in test: n_pos - 2 positives train
    problems = check_paper_folds(cfg, y, split, NAMES)
    if fragment is None:
        assert problems == []
    else:
        assert any(fragment in str(p) for p in problems), problems


@pytest.mark.parametrize(
    "n_pos,outer,inner,lasso,fragment",
    [
        (30, 5, 5, 5, None),
        (3, 2, 2, 2, "keeps about 1 case(s) of class malignant; search.inner_folds=2 needs"),
        (2, 3, 2, 2, "the cohort has 2 case(s) of class malignant; search.outer_folds=3"),
        (10, 5, 5, 7, "each inner training fold (search.outer_folds=5, search.inner_folds=5)"),
    ],
)
def test_search_fold_levels(compose, n_pos, outer, inner, lasso, fragment):
    cfg = compose(
        "+exp=search",
        f"search.outer_folds={outer}",
        f"search.inner_folds={inner}",
        f"selection.lasso_cv={lasso}",
    )
    problems = check_search_folds(cfg, _y(n_pos, 40), NAMES, "search")
    if fragment is None:
        assert problems == []
    else:
        assert len(problems) == 1 and fragment in str(problems[0]), problems


def test_search_space_adapts_to_a_features_table(tmp_path, monkeypatch, compose, caplog):
    """Unprefixed columns are the tumour; ring widths and use_clinical the table cannot have
    leave the default space with one info line, not an error."""
    path = _plain_table(tmp_path / "plain.csv")
    monkeypatch.chdir(tmp_path)
    cfg = compose(*QUICK, "+exp=search", "data=features", f"data.features_table={path}")
    with caplog.at_level(logging.INFO, logger="her2study"):
        cohort, fs = cohort_and_features(cfg)
    assert all(c.startswith("intra_") for c in fs.table.columns)
    assert list(cfg.search.space.ring_width_mm.choices) == [0]
    assert cfg.search.space.use_clinical is False
    lines = [r.getMessage() for r in caplog.records if "search space adapted" in r.getMessage()]
    assert len(lines) == 1 and "ring_width_mm [0.5, 1, 1.5, 2, 3]" in lines[0]
    assert "use_clinical" in lines[0]
    from her2study.search import parse_space, search_defaults

    dims = {d.name: d for d in parse_space(cfg.search.space, search_defaults(cfg))}
    assert dims["use_clinical"].kind == "fixed" and dims["use_clinical"].value is False


def test_planned_signatures(compose):
    from her2study.study import planned_signatures

    cfg = compose("+exp=paper")
    planned, missing = planned_signatures(cfg, {"intra"}, has_clinical=False)
    assert planned == ["Intra"]
    assert set(missing) == {"Clinic", "IntraPeri 1 mm", "IntraPeri 2 mm", "Nomogram"}
    planned, missing = planned_signatures(cfg, {"intra", "peri1mm", "peri2mm"}, True)
    assert planned == ["Clinic", "Intra", "IntraPeri 1 mm", "IntraPeri 2 mm", "Nomogram"]
    assert missing == {}


def test_class_names_and_paper_reference_per_data_source(compose):
    synthetic = compose("+exp=paper")
    own = compose("+exp=paper", "data=features", "data.features_table=x.csv")
    assert (synthetic.data.positive_class, synthetic.data.negative_class) == (
        "HER2-low",
        "HER2-zero",
    )
    assert (own.data.positive_class, own.data.negative_class) == ("positive", "negative")
    assert paper_reference_on(synthetic, synthetic=True)
    assert not paper_reference_on(own, synthetic=False)
    assert paper_reference_on(compose("report.paper_reference=true"), synthetic=False)
    assert not paper_reference_on(compose("report.paper_reference=false"), synthetic=True)


def test_comparison_without_the_paper_has_no_paper_columns():
    metrics = pd.DataFrame(
        {
            "set": ["test"],
            "signature": ["Intra"],
            **{c: [0.7] for c in ("auc", "auc_ci_low", "auc_ci_high")},
            **{m: [0.6] for m in ("ppv", "npv", "sensitivity", "specificity", "accuracy")},
        }
    )
    with_paper = compare_with_paper(metrics, True)
    without = compare_with_paper(metrics, False)
    assert "paper AUC (95% CI)" in with_paper.columns
    assert not [c for c in without.columns if "paper" in c]
    assert without["AUC (95% CI)"].iloc[0] == with_paper["AUC (95% CI)"].iloc[0]


def test_result_set_moves_everything_or_nothing(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "__main__.log").write_text("log")
    with pytest.raises(RuntimeError):
        with result_set(out) as stage:
            (stage / "table3.csv").write_text("a")
            raise RuntimeError("the fit failed")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["__main__.log", "run"]
    with result_set(out) as stage:
        (stage / "table3.csv").write_text("a")
        (stage / "report.html").write_text("r")
        (stage / "overlays").mkdir()
        (stage / "overlays" / "C1.png").write_bytes(b"png")
        assert not (out / "table3.csv").exists()  # not before the end
    assert (out / "table3.csv").read_text() == "a" and (out / "overlays" / "C1.png").is_file()
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
@pytest.mark.e2e
def test_paper_runs_on_an_unprefixed_features_table(tmp_path, monkeypatch, compose, caplog):
    """A public features table with the defaults: one region (tumour), no clinical columns; the
    run says once which signatures it cannot fit, its report says so too, and no HER2
    reference or class name appears."""
    from her2study.__main__ import run

    path = _plain_table(tmp_path / "plain.csv")
    monkeypatch.chdir(tmp_path)
    cfg = compose(
        *QUICK,
        "+exp=paper",
        "data=features",
        f"data.features_table={path}",
        "split.balance_on=null",
        "data.positive_class=malignant",
        "data.negative_class=benign",
    )
    with caplog.at_level(logging.INFO, logger="her2study"):
        assert run(cfg) == 0
    said = [r.getMessage() for r in caplog.records if "signatures not fitted" in r.getMessage()]
    assert len(said) == 1 and "Clinic (no clinical columns" in said[0]
    (report,) = tmp_path.rglob("report.html")
    text = report.read_text(encoding="utf-8")
    assert "Not fitted: Clinic" in text and "malignant (label 1)" in text
    assert "HER2" not in text.replace("her2study", "")
    table3 = pd.read_csv(report.parent / "table3.csv")
    assert set(table3["signature"]) == {"Intra"}
    assert not [c for c in table3.columns if "paper" in c]
    assert np.isfinite(pd.read_csv(report.parent / "metrics.csv")["auc"]).all()
