"""The paper protocol on a split: training-only fitting, thresholds, ICC, features-table input."""

import numpy as np
import pandas as pd
import pytest
from conftest import QUICK_FIT, noise_features, run_cli, write_features_table

from her2study.evaluation import choose_threshold
from her2study.results import evaluate_signatures, paired_delong
from her2study.split import block_split
from her2study.study import fit_signatures, icc_filter


@pytest.fixture
def data():
    X, clinical, y = noise_features()
    table = clinical.assign(label=y)
    split = block_split(table, "label", test_size=0.3, seed=1)
    return X, clinical, y, split


def test_signatures_never_see_test_labels(compose, data):
    X, clinical, y, split = data
    cfg = compose("+exp=paper", *QUICK_FIT)
    fits = fit_signatures(X, clinical, y, split, [1.0, 2.0], cfg)
    assert [f.name for f in fits] == [
        "Clinic",
        "Intra",
        "IntraPeri 1 mm",
        "IntraPeri 2 mm",
        "Nomogram",
    ]
    shuffled = y.copy()
    test = split.index[split == "test"]
    shuffled.loc[test] = np.random.default_rng(5).permutation(y.loc[test].to_numpy())
    again = fit_signatures(X, clinical, shuffled, split, [1.0, 2.0], cfg)
    for a, b in zip(fits, again, strict=True):
        pd.testing.assert_series_equal(a.prob, b.prob)
        pd.testing.assert_series_equal(a.oof, b.oof)  # out-of-fold: training cases only
        assert set(a.oof.index) == set(split.index[split == "train"]) and a.oof.notna().all()
    # the planted columns are found
    assert "peri1mm_f0" in fits[2].coefficients.index
    assert all(c.startswith(("intra_", "peri1mm_")) for c in fits[2].columns)


def test_threshold_from_out_of_fold_training_predictions_applied_to_test(compose, data, caplog):
    X, clinical, y, split = data
    cfg = compose("+exp=paper", *QUICK_FIT, "evaluation.bootstrap_reps=4")
    with caplog.at_level("INFO"):
        fits = fit_signatures(X, clinical, y, split, [1.0], cfg)
    assert "the only ring signature: no choice made" in caplog.text and "nan" not in caplog.text
    metrics = evaluate_signatures(fits, y, split, cfg)
    assert set(metrics["set"]) == {"train_apparent", "train_corrected", "train_oof", "test"}
    assert set(metrics["kind"]) == {"apparent", "optimism_corrected", "out_of_fold", "test"}
    labelled = metrics[metrics["set"] != "train_corrected"]
    assert (labelled.groupby("signature")["threshold"].nunique() == 1).all()
    train = split.index[split == "train"]
    for fit in fits:
        thr = labelled.loc[labelled["signature"] == fit.name, "threshold"].iloc[0]
        assert thr == choose_threshold(y[train].to_numpy(), fit.oof[train].to_numpy(), "youden")
    row = metrics[(metrics["set"] == "test") & (metrics["signature"] == "IntraPeri 1 mm")].iloc[0]
    assert 0.6 < row["auc"] <= 1 and row["auc_ci_low"] < row["auc"] < row["auc_ci_high"]
    for m in ("sensitivity", "specificity", "ppv", "npv", "accuracy"):
        assert row[f"{m}_ci_low"] <= row[m] <= row[f"{m}_ci_high"]
    assert row["cal_slope_ci_low"] < row["cal_slope"] < row["cal_slope_ci_high"]
    corrected = metrics[metrics["set"] == "train_corrected"].set_index("signature")
    apparent = metrics[metrics["set"] == "train_apparent"].set_index("signature")
    assert (corrected["n_boot"] == 4).all()
    assert (corrected["auc"] <= apparent["auc"] + 1e-12).all()  # optimism is positive here
    tests = paired_delong(fits, y, split)
    pairs = len(fits) * (len(fits) - 1) // 2
    assert sorted(tests["set"].value_counts().to_dict().items()) == [
        ("test", pairs),
        ("train_oof", pairs),
    ]
    assert tests["p"].between(0, 1).all() and (tests["p_holm"] >= tests["p"] - 1e-12).all()
    assert (tests["diff_ci_low"] <= tests["diff"]).all() and (
        tests["diff"] <= tests["diff_ci_high"]
    ).all()
    np.testing.assert_allclose(tests["diff"], tests["auc_a"] - tests["auc_b"])


def test_the_paper_way_stays_available(compose, data):
    """In-sample rad-scores and apparent thresholds reproduce the paper's procedure."""
    X, clinical, y, split = data
    cfg = compose(
        "+exp=paper",
        *QUICK_FIT,
        "model.nomogram.rad_score=in_sample",
        "evaluation.threshold_on=apparent",
    )
    fits = fit_signatures(X, clinical, y, split, [1.0], cfg)
    metrics = evaluate_signatures(fits, y, split, cfg)
    train = split.index[split == "train"]
    nom = fits[-1]
    assert nom.details["rad_score"] == "in_sample"
    from her2study.models import rad_score

    ring = fits[-2]
    np.testing.assert_allclose(
        nom.model.design_["rad_score"], rad_score(ring.model, X.loc[train, ring.columns])
    )
    for fit in fits:
        thr = metrics.loc[metrics["signature"] == fit.name, "threshold"].iloc[0]
        assert thr == choose_threshold(y[train].to_numpy(), fit.prob[train].to_numpy(), "youden")


def test_fixed_signature_for_nomogram_and_unknown_name(compose, data):
    X, clinical, y, split = data
    cfg = compose("+exp=paper", *QUICK_FIT, "model.nomogram.signature=IntraPeri 2 mm")
    fits = fit_signatures(X, clinical, y, split, [1.0, 2.0], cfg)
    assert fits[-1].details["base_signature"] == "IntraPeri 2 mm"
    assert fits[-1].details["vif"].max() < 5
    cfg = compose("+exp=paper", *QUICK_FIT, "model.nomogram.signature=IntraPeri 9 mm")
    with pytest.raises(ValueError, match="model.nomogram.signature='IntraPeri 9 mm'"):
        fit_signatures(X, clinical, y, split, [1.0, 2.0], cfg)


def test_icc_filter_drops_unreliable_features(compose, data):
    X, clinical, y, split = data
    rng = np.random.default_rng(0)
    r2 = X + rng.normal(scale=0.05, size=X.shape)
    r2["intra_f1"] = rng.normal(size=len(X))  # reader 2 disagrees completely on this one
    both = X.join(r2.add_prefix("reader2__"))
    cfg = compose("+exp=paper", "selection.icc_threshold=0.75")
    train = split.index[split == "train"]
    kept, table = icc_filter(both, train, cfg.selection)
    assert "intra_f1" not in kept.columns and "intra_f0" in kept.columns
    assert not any(c.startswith("reader2__") for c in kept.columns)
    assert table.loc["intra_f0", "icc"] > 0.99 and table.loc["intra_f1", "icc"] < 0.3
    # test cases play no part: changing their reader-2 values changes nothing
    test = split.index[split == "test"]
    both.loc[test, "reader2__intra_f0"] = 1e6
    kept2, table2 = icc_filter(both, train, cfg.selection)
    pd.testing.assert_frame_equal(table, table2)


def test_paper_on_a_features_table(tmp_path, data):
    X, clinical, y, _ = data
    write_features_table(tmp_path / "features.csv", X, clinical, y)
    res = run_cli(
        [
            "+exp=paper",
            "data=features",
            f"data.features_table={tmp_path / 'features.csv'}",
            "data.clinical_columns=[age,er_pct]",
            "tracking=off",
            *QUICK_FIT,
        ],
        tmp_path,
        timeout=300,
    )
    assert f"Data: cohort from {tmp_path / 'features.csv'}" in res.stdout
    assert "SYNTHETIC" not in res.stdout
    assert "IntraPeri 2 mm" in res.stdout


def test_block_split_matches_the_paper_design():
    rng = np.random.default_rng(3)
    table = pd.DataFrame(
        {"label": [1] * 129 + [0] * 80, "age": rng.normal(53, 12, 209).round()},
        index=[f"c{i}" for i in range(209)],
    )
    split = block_split(table, "label", test_size=54 / 209, block_size=10, seed=7)
    assert split.value_counts().to_dict() == {"train": 155, "test": 54}
    by_class = pd.crosstab(split, table["label"])
    assert abs(by_class.loc["test", 1] / 129 - by_class.loc["test", 0] / 80) < 0.03  # stratified
    means = table.groupby(split)["age"].mean()
    assert abs(means["train"] - means["test"]) < 2.0  # age-matched by blocking on age
    assert split.equals(block_split(table, "label", test_size=54 / 209, seed=7))
    assert not split.equals(block_split(table, "label", test_size=54 / 209, seed=8))


def test_split_column_is_used_as_given(compose):
    from her2study.split import split_from_config

    table = pd.DataFrame({"label": [0, 1, 0, 1], "split": ["train", "train", "test", "Test"]})
    cfg = compose("split.method=column")
    got = split_from_config(table, cfg.split, "label", 0)
    assert got.tolist() == ["train", "train", "test", "test"]


@pytest.mark.parametrize(
    "n_pos,lasso,fragment", [(8, 10, "selection.lasso_cv=10"), (3, 2, "evaluation.cv_folds=5")]
)
def test_fold_guard_of_the_fit_is_the_preflight_rule(compose, n_pos, lasso, fragment):
    """fit_signatures' own guard (for callers that make their own splits) and the up-front
    check say the same thing in the same words: one rule (her2study.split)."""
    from her2study.errors import ConfigError
    from her2study.preflight import check_paper_folds
    from her2study.study import check_class_sizes

    cfg = compose("+exp=paper", f"selection.lasso_cv={lasso}", "evaluation.cv_folds=5")
    y = pd.Series([1] * n_pos + [0] * 40, index=[f"c{i}" for i in range(n_pos + 40)])
    split = pd.Series("train", index=y.index)
    split.iloc[[-1, -2]] = "test"
    split.iloc[[0]] = "test"
    names = {0: str(cfg.data.negative_class), 1: str(cfg.data.positive_class)}
    first = check_paper_folds(cfg, y, split, names)
    first = [p for p in first if "test set" not in p.message][0]
    with pytest.raises(ConfigError) as info:
        check_class_sizes(y[split == "train"], cfg)
    assert str(info.value) == f"{first.message}: {first.fix}"
    assert fragment in str(info.value) and f"has {n_pos - 1} case(s)" in str(info.value)
