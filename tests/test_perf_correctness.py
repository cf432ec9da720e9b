"""Speed-ups that must not change a result: the same features, selections and predictions.

Speed itself is measured in ``experiments/benchmarks/`` (ratios run side by side), never here.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from her2study.selection.correlation import CorrelationFilter, CorrelationMemo


def _blocky(n=60, p=80, seed=0):
    """Columns in correlated blocks (as radiomics features are), one constant column."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 8))
    X = np.repeat(base, p // 8, axis=1) + rng.normal(scale=rng.uniform(0.05, 1.5, p), size=(n, p))
    X[:, 5] = 3.0
    y = (base[:, 0] + rng.normal(size=n) > 0).astype(int)
    return X, y


def _fit(X, y, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the constant column
        return CorrelationFilter(**params).fit(X, y)


@pytest.mark.parametrize("method", ["spearman", "pearson"])
@pytest.mark.parametrize("rule", ["mean_abs_corr", "later", "target"])
def test_correlation_memo_gives_the_selection_of_a_fresh_fit(method, rule):
    X, y = _blocky()
    memo = CorrelationMemo()
    thresholds = [0.95, 0.8, 0.9, 0.85, 0.5, 0.6]  # 0.5 is below the memo's floor: recomputed
    for t in thresholds:
        alone = _fit(X, y, threshold=t, method=method, rule=rule)
        with memo.active():
            shared = _fit(X, y, threshold=t, method=method, rule=rule)
        np.testing.assert_array_equal(shared.support_, alone.support_)
        assert shared.drop_log_ == alone.drop_log_
        np.testing.assert_array_equal(shared.mean_abs_corr_, alone.mean_abs_corr_)
        np.testing.assert_array_equal(shared.constant_, alone.constant_)
        if rule == "target":
            np.testing.assert_array_equal(shared.target_corr_, alone.target_corr_)
        assert 0 < shared.support_.sum() < X.shape[1]
    # the matrix was computed for the first threshold and again below the floor; else shared
    assert (memo.misses, memo.hits) == (2, len(thresholds) - 2)
    # other data (one value changed) is another entry, not a stale hit
    X2 = X.copy()
    X2[0, 0] += 1.0
    with memo.active():
        other = _fit(X2, y, threshold=0.9, method=method, rule=rule)
    np.testing.assert_array_equal(
        other.support_, _fit(X2, y, threshold=0.9, method=method, rule=rule).support_
    )
    assert memo.misses == 3


def test_correlation_memo_is_bounded_and_only_active_inside_its_block():
    X, y = _blocky()
    memo = CorrelationMemo(max_mb=1e-3)  # 1 kB: no entry fits
    with memo.active():
        _fit(X, y, threshold=0.9)
        _fit(X, y, threshold=0.8)
    assert memo.hits == 0 and memo._bytes == 0
    memo = CorrelationMemo()
    _fit(X, y, threshold=0.9)  # not active: untouched
    assert (memo.hits, memo.misses) == (0, 0)


def _blocky_design(n=60, p=24, seed=1):
    import pandas as pd

    from her2study.search.candidate import Design

    X, y = _blocky(n, 2 * p, seed)
    X[:, 5] += np.linspace(0, 1e-3, n)  # no constant column here (the scaler's output)
    idx = pd.Index([f"C{i:03d}" for i in range(n)], name="case_id")
    cols = [f"intra_f{i}" for i in range(p)] + [f"peri1mm_f{i}" for i in range(p)]
    return Design.from_tables(pd.DataFrame(X, index=idx, columns=cols), pd.Series(y, idx), None)


def test_inner_cv_shares_the_spearman_matrix_across_thresholds(compose):
    """Candidates differing only in ``corr_threshold``: the memo computes the fold's matrix once
    and the fold predictions equal refitting every pipeline from scratch."""
    from her2study.search.candidate import Candidate, base_selection
    from her2study.search.memo import InnerCV

    sel = {**base_selection(compose()), "lasso_cv": 2, "lasso_n_lambdas": 8}
    design = _blocky_design()
    thresholds = [0.8, 0.9, 0.95]
    cands = [Candidate(1.0, False, {**sel, "corr_threshold": t}, "ridge", {}) for t in thresholds]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = InnerCV(design, design.X.index, 3, seed=2, reuse=True)
        plain = InnerCV(design, design.X.index, 3, seed=2, reuse=False)
        selected = set()
        for cand in cands:
            for a, b in zip(fast.fold_probs(cand), plain.fold_probs(cand), strict=True):
                np.testing.assert_array_equal(a, b)
            selected.add(tuple(np.round(fast.fold_probs(cand)[0], 12)))
    assert len(selected) > 1  # the thresholds select differently: the test can tell them apart
    assert fast.corr_memo.misses == 3  # one matrix per fold
    assert fast.corr_memo.hits == 3 * (len(thresholds) - 1)


_SERVE_CACHED = """
import json, os, sys
from her2study.cohort import load_cohort
from her2study.features import extract_features
from her2study.regions import region_specs
fs = extract_features(load_cohort(sys.argv[1]), region_specs(True, [1.0, 2.0]),
                      json.loads(sys.argv[2]), sys.argv[3], n_jobs=2)
def parent(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[1]
    except OSError:  # the process ended meanwhile
        return None
kids = [p for p in os.listdir("/proc") if p.isdigit() and parent(p) == str(os.getpid())]
fs.table.to_pickle(sys.argv[4])
print(json.dumps({"children": len(kids), "radiomics": "radiomics" in sys.modules,
                  "n_cached": fs.n_cached, "n_extracted": fs.n_extracted}))
"""


def test_fully_cached_extraction_starts_no_worker_and_gives_the_same_table(make_cohort, tmp_path):
    """Cache hits are served by the parent: with ``n_jobs=2`` no worker process is started and
    pyradiomics is not even imported; the table equals the cold one bit for bit."""
    import json
    import subprocess
    import sys

    import pandas as pd
    from conftest import FAST_PARAMS, REPO

    from her2study.cohort import load_cohort
    from her2study.features import extract_features
    from her2study.regions import region_specs

    manifest = make_cohort(n=4)
    cache = tmp_path / "cache"
    cold = extract_features(
        load_cohort(manifest), region_specs(True, [1.0, 2.0]), FAST_PARAMS, cache
    )
    out = tmp_path / "warm.pkl"
    args = [str(manifest), json.dumps(FAST_PARAMS), str(cache), str(out)]
    done = subprocess.run(
        [sys.executable, "-c", _SERVE_CACHED, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"children": 0, "radiomics": False, "n_cached": 12, "n_extracted": 0}
    pd.testing.assert_frame_equal(pd.read_pickle(out), cold.table, check_exact=True)


def test_partly_cached_case_extracts_only_its_missing_region(make_cohort, tmp_path):
    from conftest import FAST_PARAMS

    from her2study.cohort import load_cohort
    from her2study.features import extract_features
    from her2study.regions import region_specs

    cohort = load_cohort(make_cohort(n=3))
    cache = tmp_path / "cache"
    specs = region_specs(True, [1.0])
    cold = extract_features(cohort, specs, FAST_PARAMS, cache)
    entries = sorted((cache / "features").glob("*/*.json"))
    entries[0].unlink()
    again = extract_features(cohort, specs, FAST_PARAMS, cache, n_jobs=2)
    assert (again.n_cached, again.n_extracted) == (5, 1)
    import pandas as pd

    pd.testing.assert_frame_equal(again.table, cold.table, check_exact=True)
    pd.testing.assert_frame_equal(again.region_stats, cold.region_stats, check_exact=True)


def _paper_params():
    import yaml
    from conftest import REPO

    return yaml.safe_load((REPO / "conf/extractor/paper.yaml").read_text())["params"]


def test_filters_once_per_case_give_executes_values_bit_for_bit(make_cohort):
    """The tumour and two rings of real files with the paper settings (wavelet, LoG, LBP2D,
    ...): one filtering per case gives every value ``execute`` gives region by region."""
    from her2study.cohort import load_cohort
    from her2study.cohort.io import read_image, read_mask
    from her2study.features.extraction import build_extractor
    from her2study.features.shared import can_share_filters, execute_regions
    from her2study.regions import RegionMaker, field_of_view, region_image, region_specs

    extractor = build_extractor(_paper_params())
    assert can_share_filters(extractor)
    for case in load_cohort(make_cohort(n=2)).cases[:1]:  # one case: 3 regions
        image, _ = read_image(case.image, case.spacing_mm)
        mask = read_mask(case.mask, image, None, plain_spacing=case.spacing_mm is not None)
        maker = RegionMaker(mask, field_of_view(image, "nonzero"), 2.0)
        specs = region_specs(True, [1.0, 2.0])
        masks = {s.name: region_image(maker.make(s)[0], image) for s in specs}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            shared = execute_regions(extractor, image, masks)
            for name, region in masks.items():
                alone = extractor.execute(image, region, label=1)
                values = {k: v for k, v in alone.items() if not k.startswith("diagnostics_")}
                assert list(shared[name]) == list(values)  # same features, same order
                for k, v in values.items():
                    np.testing.assert_array_equal(np.asarray(shared[name][k]), np.asarray(v), k)
        assert len(values) > 1000


def test_mask_dependent_settings_fall_back_to_execute():
    from her2study.features.extraction import build_extractor
    from her2study.features.shared import can_share_filters

    base = _paper_params()
    lbp3d = {**base, "imageType": {**base["imageType"], "LBP3D": {}}}
    resampled = {**base, "setting": {**base["setting"], "resampledPixelSpacing": [0.5, 0.5]}}
    assert not can_share_filters(build_extractor(lbp3d))
    assert not can_share_filters(build_extractor(resampled))


def test_cache_entries_verify_fast_keep_their_order_and_older_layouts_still_read(tmp_path):
    import json

    from her2study.features.cache import FeatureCache, _fast_value, content_checksum

    value = {"features": {"b_x": 1.5, "a_y": float("nan"), "c": -0.1}, "stats": {"n_pixels": 3}}
    cache = FeatureCache(tmp_path)
    cache.put("ab12", value)
    path = cache._path("ab12")
    entry = json.loads(path.read_text())  # plain JSON, the checksum of its value as before
    assert entry["sha256"] == content_checksum(entry["value"])
    assert _fast_value(path.read_bytes()) is not None  # verified from the stored bytes
    got = cache.get("ab12")
    assert list(got["features"]) == ["b_x", "a_y", "c"]  # feature order kept (column order)
    assert got["features"]["b_x"] == 1.5 and np.isnan(got["features"]["a_y"])
    # an entry written by the previous layout reads the same, then is rewritten in the new one
    path.write_text(json.dumps({"sha256": content_checksum(value), "value": value}))
    assert _fast_value(path.read_bytes()) is None
    assert list(cache.get("ab12")["features"]) == ["b_x", "a_y", "c"]
    assert _fast_value(path.read_bytes()) is not None
    # one changed digit in the stored value: neither check passes, the entry is discarded
    path.write_bytes(path.read_bytes().replace(b"1.5", b"1.6"))
    assert cache.get("ab12") is None and not path.exists()
    assert "does not match its checksum" in cache.problems[-1]


def test_bootstrap_validation_is_reused_from_the_fit_cache_identically(tmp_path):
    """Warm equals cold bit for bit; any change of data, seed or estimator misses."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from her2study.evaluation.validation import optimism_bootstrap
    from her2study.fitcache import use_fit_cache

    X, y = _blocky(n=50, p=16, seed=4)
    X = pd.DataFrame(X[:, [0, 1, 2, 9, 15]], columns=list("abcde"))
    est = make_pipeline(StandardScaler(), LogisticRegression(C=0.5))
    plain = optimism_bootstrap(est, X, y, n_boot=8, seed=3)
    with use_fit_cache(tmp_path) as cache:
        cold = optimism_bootstrap(est, X, y, n_boot=8, seed=3)
        warm = optimism_bootstrap(est, X, y, n_boot=8, seed=3)
        assert (cache.hits, cache.misses) == (1, 1)
        optimism_bootstrap(est, X, y, n_boot=8, seed=4)  # another seed
        X2 = X.copy()
        X2.iloc[0, 0] += 1e-9
        optimism_bootstrap(est, X2, y, n_boot=8, seed=3)  # other data
        other = make_pipeline(StandardScaler(), LogisticRegression(C=0.6))
        optimism_bootstrap(other, X, y, n_boot=8, seed=3)  # another parameter
        assert (cache.hits, cache.misses) == (1, 4)
    for result in (cold, warm):
        pd.testing.assert_frame_equal(result.to_frame(), plain.to_frame(), check_exact=True)
        np.testing.assert_array_equal(result.boot_training, plain.boot_training)
        np.testing.assert_array_equal(result.boot_test, plain.boot_test)
        assert (result.failures, result.warnings) == (plain.failures, plain.warnings)


def test_paper_signatures_warm_equal_cold_from_the_fit_cache(compose, tmp_path):
    """The paper's signatures (Clinic, Intra, IntraPeri 1/2 mm, Nomogram) with bootstrap
    validation, fitted twice on one tiny table, and their figures drawn twice: the second run
    reuses the final fits (skops), out-of-fold predictions, validations and rendered figures,
    and every prediction, coefficient, fold AUC, validation row and figure is the same."""
    import pandas as pd
    from conftest import noise_features

    from her2study.fitcache import skops_bytes, use_fit_cache
    from her2study.study import fit_signatures
    from her2study.tasks.paper import make_figures

    X, clinical, y = noise_features(n=64, p=10)
    split = pd.Series(np.where(np.arange(len(y)) % 4 == 0, "test", "train"), index=y.index)
    cfg = compose(
        "+exp=paper",
        f"cache_dir={tmp_path}",
        "evaluation.bootstrap_reps=3",
        "evaluation.cv_folds=3",
        "evaluation.cv_repeats=1",
        "selection.lasso_cv=3",
        "execution.n_jobs=1",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with use_fit_cache(cfg.cache_dir):  # as task=paper runs it
            cold = fit_signatures(X, clinical, y, split, [1.0, 2.0], cfg)
            cold_figs = make_figures(cold, y, split, cfg, "SYNTHETIC test")
        stored = {p: p.stat().st_mtime_ns for p in (tmp_path / "fits").glob("*/*.npz")}
        with use_fit_cache(cfg.cache_dir) as cache:
            warm = fit_signatures(X, clinical, y, split, [1.0, 2.0], cfg)
            warm_figs = make_figures(warm, y, split, cfg, "SYNTHETIC test")
        with use_fit_cache(None):
            drawn = make_figures(cold, y, split, cfg, "SYNTHETIC test")  # no cache: all drawn
    assert len(stored) > len(cold) + len(cold_figs)  # fits, out-of-fold, bootstrap, figures
    # ... and all reused: a miss would have written (replaced) its entry again
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "fits").glob("*/*.npz")} == stored
    # (the clinical model's statsmodels results are not storable by skops: its entry only says
    # so, and it is refitted, cheaply, without another attempt to store it)
    assert cache.misses == 0 and cache.hits > 0
    assert [f.name for f in warm] == [f.name for f in cold]
    assert {"Clinic", "Intra", "Nomogram"} <= {f.name for f in cold}
    for a, b in zip(cold, warm, strict=True):
        pd.testing.assert_series_equal(a.prob, b.prob, check_exact=True)
        pd.testing.assert_series_equal(a.oof, b.oof, check_exact=True)
        pd.testing.assert_frame_equal(a.validation, b.validation, check_exact=True)
        pd.testing.assert_frame_equal(a.details["cv_folds"], b.details["cv_folds"])
        if a.kind == "radiomics":  # the fitted pipeline read back from its skops bytes
            assert b.model is not a.model and skops_bytes(b.model) == skops_bytes(a.model)
            pd.testing.assert_series_equal(a.coefficients, b.coefficients, check_exact=True)
            pd.testing.assert_frame_equal(a.details["lasso_cv"], b.details["lasso_cv"])
            Xt = a.inputs.loc[split.index[split == "test"]]
            np.testing.assert_array_equal(a.model.predict_proba(Xt), b.model.predict_proba(Xt))
    assert {"roc_test", "nomogram", "lasso_cv_Intra"} <= set(cold_figs)
    assert warm_figs == cold_figs == drawn  # the same PNG bytes, cached or drawn
    assert all(png.startswith(b"\x89PNG") for png in cold_figs.values())


@pytest.mark.slow
@pytest.mark.e2e
def test_warm_paper_run_equals_the_cold_one_tables_figures_and_model(synthetic_cache_copy):
    """``+exp=paper`` twice in one folder (tracking on, SQLite, bootstrap validation): the warm
    run reuses every fit, validation, figure and model check (it writes no cache entry) and
    gives the same bytes in every result table, every figure and every logged model file."""
    import hashlib
    import shutil

    from conftest import QUICK_FIT, SMALL, run_cli, tree_state

    cache = synthetic_cache_copy
    shutil.rmtree(cache / "fits", ignore_errors=True)  # features cached, no fit yet
    work = cache.parent / "work"
    work.mkdir()
    args = ["+exp=paper", *SMALL, *QUICK_FIT, "evaluation.bootstrap_reps=2", f"cache_dir={cache}"]
    run_cli(args, work)
    fits = tree_state(cache / "fits")
    run_cli(args, work)
    assert tree_state(cache / "fits") == fits  # nothing recomputed: no entry (re)written

    cold, warm = sorted((work / "outputs" / "paper").iterdir())
    results = sorted(p.name for p in cold.iterdir() if p.suffix in (".csv", ".md", ".png"))
    assert {"table3.csv", "metrics.csv", "validation.csv", "roc_test.png"} <= set(results)
    assert results == sorted(p.name for p in warm.iterdir() if p.suffix in (".csv", ".md", ".png"))
    for name in results:
        assert (cold / name).read_bytes() == (warm / name).read_bytes(), name
    # each radiomics signature's model, logged by both runs: the same pipeline file
    logged = [
        hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (work / "mlartifacts").rglob("pipeline.skops")
    ]
    assert len(logged) == 6 and all(logged.count(h) == 2 for h in logged)
    # ... and every model folder, the warm run's (logged without MLflow's repeated input check,
    # from the cached bytes) as the cold run's, loads through her2study's loader and predicts
    import pandas as pd

    from her2study.model_artifact import load_model

    predicted = {}
    for mlmodel in (work / "mlartifacts").rglob("MLmodel"):
        model, card = load_model(mlmodel.parent)
        zeros = pd.DataFrame(np.zeros((2, len(card["columns"]))), columns=card["columns"])
        skops = hashlib.sha256((mlmodel.parent / "artifacts" / "pipeline.skops").read_bytes())
        prob = model.predict(zeros)["probability"].to_numpy()
        assert np.isfinite(prob).all()
        predicted.setdefault(skops.hexdigest(), []).append(prob)
    assert len(predicted) == 3 and all(len(v) == 2 for v in predicted.values())
    for cold_prob, warm_prob in predicted.values():
        np.testing.assert_array_equal(cold_prob, warm_prob)


def test_a_cached_fit_is_read_back_only_with_trusted_types(tmp_path, caplog):
    """A fitted pipeline in the fit cache is skops bytes plus the types it names: an entry that
    names a type outside scikit-learn/NumPy/SciPy/her2study estimators, or hides one skops
    would have to trust, is refused (and the estimator refitted), never loaded."""
    import json

    import pandas as pd
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from her2study.fitcache import cached_fit, skops_bytes, use_fit_cache
    from her2study.selection.correlation import CorrelationFilter as CF

    X, y = _blocky(n=40, p=16, seed=1)
    X = pd.DataFrame(np.delete(X, 5, axis=1))
    est = make_pipeline(StandardScaler(), CF(threshold=0.9))
    with use_fit_cache(tmp_path) as cache:
        first = cached_fit(est, X, y)
        (path,) = (tmp_path / "fits").glob("*/*.npz")
        again = cached_fit(est, X, y)
        assert (cache.hits, cache.misses) == (1, 1) and again is not first
        assert skops_bytes(again) == skops_bytes(first)
        np.testing.assert_array_equal(again.transform(X), first.transform(X))
        with np.load(path, allow_pickle=False) as npz:
            arrays = dict(npz)
        meta = json.loads(arrays.pop("__meta__").tobytes())
        assert "her2study.selection.correlation.CorrelationFilter" in meta["types"]
        for types in (["os.system", *meta["types"]], []):  # a foreign type; a hidden one
            forged = np.frombuffer(json.dumps({**meta, "types": types}).encode(), np.uint8)
            np.savez(path, __meta__=forged, **arrays)
            with caplog.at_level("WARNING", logger="her2study.fitcache"):
                refit = cached_fit(est, X, y)
            assert "refitted" in caplog.text and cache.misses == 1  # not loaded: fitted again
            np.testing.assert_array_equal(refit.transform(X), first.transform(X))
            caplog.clear()
