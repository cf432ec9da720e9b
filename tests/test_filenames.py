"""File names made from case ids stay inside their folder, whatever the manifest says."""

import logging

import pytest

from her2study.__main__ import run
from her2study.filenames import safe_filename

HOSTILE = [
    "../../../../escaped_overlay",
    "../../../../../../escaped_deeper",
    "a/b",
    "a\\b",
    "Müller Anna",
    ".hidden",
    "..",
    "/etc/passwd",
    "C:\\temp\\x",
    "名前 テスト",
    "x" * 300,
]


@pytest.mark.parametrize("raw", HOSTILE + ["C001", "case_17", "HER2-045", "P0123.v2"])
def test_safe_filename_is_one_plain_component(raw):
    name = safe_filename(raw, ".png")
    stem = name[: -len(".png")]
    assert stem and not stem.startswith(".") and len(name) < 128
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in stem)
    assert "/" not in name and "\\" not in name and name not in (".", "..")


def test_clean_ids_are_kept_and_changed_ones_stay_distinct():
    assert safe_filename("C001", ".png") == "C001.png"
    assert safe_filename("HER2-045") == "HER2-045"
    names = {safe_filename(r) for r in ["a/b", "a\\b", "a b", "a_b", "a:b"]}
    assert len(names) == 5  # the hash keeps ids that map to the same text apart
    assert safe_filename("a/b") == safe_filename("a/b")  # stable between runs


def _files(root):
    return {p for p in root.rglob("*") if p.is_file()}


def test_overlays_of_hostile_ids_stay_in_the_run_folder(
    make_cohort, tmp_path, monkeypatch, compose, caplog
):
    ids = HOSTILE[:8]

    def edit(df, root):
        df["case_id"] = ids
        return df

    manifest = make_cohort(n=len(ids), extra=edit)
    work = tmp_path / "work"
    work.mkdir()
    base = tmp_path.parent.parent  # six levels above the overlays folder: the deepest escape
    before = _files(tmp_path) | {p for p in base.glob("escaped*")}
    monkeypatch.chdir(work)
    cfg = compose(
        "execution.progress=false",
        "extractor=fast",
        "tracking=off",
        "task=extract",
        "data=manifest",
        f"data.manifest={manifest}",
        f"region.overlays={len(ids)}",
        f"cache_dir={work / 'cache'}",
    )
    with caplog.at_level(logging.INFO):
        assert run(cfg) == 0
    new = _files(tmp_path) - before
    assert not [p for p in base.glob("escaped*")]
    outside = [p for p in new if work not in p.parents]
    assert not outside, outside
    overlays = [p for p in new if p.suffix == ".png"]
    assert len(overlays) == len(ids)
    folder = work / "outputs" / cfg.study / "overlays"
    assert all(p.parent == folder and not p.name.startswith(".") for p in overlays)
