"""A damaged features-cache entry is reported by name, discarded and recomputed."""

import json
import logging

import pandas as pd
from conftest import FAST_PARAMS

from her2study.cohort.manifest import load_cohort
from her2study.features import FeatureCache, extract_features
from her2study.features.cache import content_checksum
from her2study.regions import region_specs


def _edit_one_value(path):
    entry = json.loads(path.read_text())
    name = sorted(entry["value"]["features"])[0]
    entry["value"]["features"][name] = 123456.0  # the checksum is left as it was
    path.write_text(json.dumps(entry))


DAMAGE = {
    "hand-edited value": _edit_one_value,
    "emptied": lambda p: p.write_text("{}"),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "no checksum": lambda p: p.write_text(json.dumps(json.loads(p.read_text())["value"])),
    "not a dict": lambda p: p.write_text("[1, 2, 3]"),
    "value without stats": lambda p: p.write_text(
        json.dumps({"sha256": content_checksum({"features": {}}), "value": {"features": {}}})
    ),
}


def test_damaged_cache_entries_are_reported_discarded_and_recomputed(make_cohort, tmp_path, caplog):
    cohort = load_cohort(make_cohort(n=4))
    specs = region_specs(True, [1.0])
    cache = tmp_path / "cache"
    first = extract_features(cohort, specs, FAST_PARAMS, cache)
    assert first.n_extracted == 8 and first.n_cached == 0
    entries = sorted((cache / "features").glob("*/*.json"))
    assert len(entries) == 8
    for path in entries:  # every entry written carries a checksum of its content
        entry = json.loads(path.read_text())
        assert entry["sha256"] == content_checksum(entry["value"])

    damaged = dict(zip(DAMAGE, entries, strict=False))
    for kind, path in damaged.items():
        DAMAGE[kind](path)
    with caplog.at_level(logging.WARNING):
        again = extract_features(cohort, specs, FAST_PARAMS, cache)
    assert again.n_extracted == len(DAMAGE) and again.n_cached == 8 - len(DAMAGE)
    pd.testing.assert_frame_equal(again.table, first.table)  # the edited value is not used
    pd.testing.assert_frame_equal(again.region_stats, first.region_stats)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for path in damaged.values():
        name = str(path.relative_to(cache))
        hits = [w for w in warnings if name in w]
        assert len(hits) == 1 and "discarded and recomputed" in hits[0], (name, warnings)
    # rewritten whole: a third run takes everything from the cache, silently
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        third = extract_features(cohort, specs, FAST_PARAMS, cache)
    assert third.n_cached == 8 and third.n_extracted == 0
    assert "cache entry" not in caplog.text


def test_feature_cache_get_reports_each_problem(tmp_path, caplog):
    store = FeatureCache(tmp_path)
    store.put("abcdef", {"features": {"a": 1.0, "b": float("nan")}, "stats": {}})
    assert store.get("abcdef")["features"]["a"] == 1.0  # NaN round-trips the checksum
    assert store.get("missing") is None and store.problems == []
    path = tmp_path / "features" / "ab" / "abcdef.json"
    path.write_text("{}")
    with caplog.at_level(logging.WARNING):
        assert store.get("abcdef") is None
    assert "features/ab/abcdef.json is empty" in caplog.text
    assert not path.exists()
    assert len(store.problems) == 1
