"""Bad input, one table: each gives one clear message naming what is wrong and the fix,
a non-zero exit code, no half-written outputs and untouched input files.

Runs the same ``run(cfg)`` that ``python -m her2study`` runs (the exit code mapping is shown
through real subprocesses in test_cli.py).
"""

import hashlib
import json
import logging
import re

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import noise_features
from mlflow_server import free_port
from test_cohort import _break, _write_us_dicom

from her2study.__main__ import run

QUICK = [
    "execution.progress=false",
    "extractor=fast",
    "tracking=off",
    "evaluation.bootstrap_reps=0",
]


def manifest_case(kind):
    def setup(make_cohort, tmp_path):
        m = make_cohort(n=6, extra=_break(kind))
        return ["+exp=paper", "data=manifest", f"data.manifest={m}", "data.clinical_columns=[age]"]

    return setup


def features_case(edit):
    def setup(make_cohort, tmp_path):
        X, clinical, y = noise_features(n=60, p=5)
        table = X.join(clinical).assign(label=y).reset_index()
        table = edit(table)
        table.to_csv(tmp_path / "f.csv", index=False)
        return [
            "+exp=paper",
            "data=features",
            f"data.features_table={tmp_path / 'f.csv'}",
            "data.clinical_columns=[age,er_pct]",
        ]

    return setup


def dicom_without_calibration(make_cohort, tmp_path):
    def edit(df, root):
        img = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "img/C000.nii.gz")))
        _write_us_dicom(root / "img/C000.dcm", img.astype(np.uint8), regions=False)
        df.loc[0, "image"] = "img/C000.dcm"
        return df

    m = make_cohort(n=6, extra=edit)
    return ["task=extract", "data=manifest", f"data.manifest={m}"]


def params_file_unknown_key(make_cohort, tmp_path):
    (tmp_path / "params.yaml").write_text("setting:\n  binWdth: 5\nimageType:\n  Original: {}\n")
    m = make_cohort(n=6)
    return [
        "task=extract",
        "data=manifest",
        f"data.manifest={m}",
        f"extractor.params_file={tmp_path / 'params.yaml'}",
    ]


def features_file(tmp_path, n=60):
    X, clinical, y = noise_features(n=n, p=5)
    X.join(clinical).assign(label=y).reset_index().to_csv(tmp_path / "f.csv", index=False)
    return [
        "+exp=paper",
        "data=features",
        f"data.features_table={tmp_path / 'f.csv'}",
        "data.clinical_columns=[age]",
    ]


def unreachable_mlflow(make_cohort, tmp_path):
    return [
        *features_file(tmp_path),
        "tracking=sqlite",
        f"tracking.tracking_uri=http://127.0.0.1:{free_port()}",
    ]


def too_few_for_folds(make_cohort, tmp_path):
    return features_file(tmp_path, n=24)


def features_not_numeric(t):
    t["intra_f1"] = "high"
    return t


def ring_too_thin(make_cohort, tmp_path):
    m = make_cohort(n=6)
    return ["task=extract", "data=manifest", f"data.manifest={m}", "region.ring_widths_mm=[0.05]"]


def semicolon_manifest(make_cohort, tmp_path):
    m = make_cohort(n=6, extra=_break("semicolons")).parent / "semicolons.csv"
    return ["+exp=paper", "data=manifest", f"data.manifest={m}", "data.clinical_columns=[age]"]


def unknown_split(make_cohort, tmp_path):
    return [*features_file(tmp_path), "split.method=column"]


def salt_in_config(make_cohort, tmp_path):
    return [*features_file(tmp_path), "data.pseudonymise=true", "data.pseudonym_salt=s3cret"]


def image_case(edit_arrays):
    """A manifest whose case C000 has its image/mask arrays rewritten by ``edit_arrays``."""

    def setup(make_cohort, tmp_path):
        from conftest import write_nifti

        def edit(df, root):
            img = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "img/C000.nii.gz")))
            mask = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "img/C000_mask.nii.gz")))
            img, mask = edit_arrays(img, mask)
            write_nifti(img, root / "img/C000.nii.gz")
            write_nifti(mask, root / "img/C000_mask.nii.gz")
            return df

        m = make_cohort(n=6, extra=edit)
        return ["task=extract", "data=manifest", f"data.manifest={m}"]

    return setup


def three_pixel_tumour(img, mask):
    mask = np.zeros_like(mask)
    mask[60, 70:73] = 1
    return img, mask


def zero_outside_lesion(img, mask):
    return np.where(mask > 0, img, 0).astype(img.dtype), mask


def interpolated_mask(img, mask):
    from scipy import ndimage

    return img, np.clip(ndimage.gaussian_filter(mask.astype(np.float32), 1.5), 0, 1)


def manifest_without_age(make_cohort, tmp_path):
    m = make_cohort(n=6, extra=lambda df, root: df.drop(columns=["age"]))
    return ["+exp=paper", "data=manifest", f"data.manifest={m}", "data.clinical_columns=[]"]


def with_args(setup, *extra):
    def wrapped(make_cohort, tmp_path):
        return [*setup(make_cohort, tmp_path), *extra]

    return wrapped


def split_all_train(t):
    return t.assign(split="train")


def split_unknown(t):
    return t.assign(split=["train", "test", "valid"] * (len(t) // 3))


def age_all_missing(t):
    return t.assign(age=np.nan)


def feature_nan(t):
    t.loc[3, "intra_f1"] = np.nan
    return t


def feature_inf(t):
    t.loc[4, "peri1mm_f2"] = np.inf
    return t


def duplicated_column(make_cohort, tmp_path):
    args = features_file(tmp_path)
    path = tmp_path / "f.csv"
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    header[header.index("intra_f2")] = "intra_f1"
    path.write_text("\n".join([",".join(header), *lines[1:]]) + "\n")
    return args


def lasso_inside_cv_folds(make_cohort, tmp_path):
    # ~18 training cases of the smaller class: >= 16 for LASSO on all of them, but each
    # 5-fold training part keeps about 14
    return [*features_file(tmp_path), "selection.lasso_cv=16"]


def search_folds_too_many(make_cohort, tmp_path):
    X, clinical, y = noise_features(n=40, p=3)
    y[:] = 0
    y.iloc[:3] = 1  # 3 positives
    X.join(clinical).assign(label=y).reset_index().to_csv(tmp_path / "f.csv", index=False)
    return [
        "+exp=search",
        "data=features",
        f"data.features_table={tmp_path / 'f.csv'}",
        "search.outer_folds=2",
        "search.inner_folds=2",
        "selection.lasso_cv=2",
    ]


def search_clinical_without_columns(make_cohort, tmp_path):
    X, _, y = noise_features(n=40, p=3)
    X.assign(label=y).reset_index().to_csv(tmp_path / "f.csv", index=False)
    return [
        "+exp=search",
        "data=features",
        f"data.features_table={tmp_path / 'f.csv'}",
        "search.space.use_clinical=null",
        "search.use_clinical=true",
    ]


def params_file_unreadable(make_cohort, tmp_path):
    (tmp_path / "params.yaml").write_text("setting: [binWidth: 5\n  imageType: {\n")
    m = make_cohort(n=6)
    return [
        "+exp=paper",
        "data=manifest",
        f"data.manifest={m}",
        f"extractor.params_file={tmp_path / 'params.yaml'}",
    ]


def clinical_model_column_not_read(make_cohort, tmp_path):
    return [*features_file(tmp_path), "model.clinical.columns=[age,bmi]"]


BAD = [
    # (name, setup, expected fragment, exit code)
    ("missing file", manifest_case("missing_file"), "file not found", 2),
    ("corrupt image", manifest_case("corrupt"), "unreadable image", 2),
    ("mask size differs", manifest_case("size_mismatch"), "differs from image size", 2),
    ("mask spacing differs", manifest_case("spacing_mismatch"), "mask spacing", 2),
    ("mask origin differs", manifest_case("origin_mismatch"), "mask origin", 2),
    ("empty mask", manifest_case("empty_mask"), "mask is empty", 2),
    ("several labels", manifest_case("multi_label"), "set data.mask_label", 2),
    ("multi-frame image", manifest_case("multiframe"), "multi-frame", 2),
    ("duplicate ids", manifest_case("duplicate"), "duplicate case id", 2),
    ("non-binary label", manifest_case("bad_label"), "is not 0 or 1", 2),
    ("one class", manifest_case("one_class"), "only one class", 2),
    ("NaN clinical", manifest_case("clinical_nan"), "'age' is missing (NaN)", 2),
    ("text clinical", manifest_case("clinical_text"), "not numeric ('fifty')", 2),
    ("bad split value", manifest_case("bad_split"), "not train/test", 2),
    ("header-only manifest", manifest_case("no_rows"), "manifest.csv has no cases", 2),
    ("spacing decimal comma", manifest_case("decimal_comma"), "use a dot", 2),
    ("spacing zero", manifest_case("zero_spacing"), "spacing must be > 0 mm", 2),
    ("spacing negative", manifest_case("negative_spacing"), "spacing must be > 0 mm", 2),
    ("semicolon manifest", semicolon_manifest, "delimited by semicolons", 2),
    (
        "clinical column absent",
        features_case(lambda t: t.drop(columns=["age"])),
        "clinical column 'age' named in config is absent",
        2,
    ),
    ("feature not numeric", features_case(features_not_numeric), "'intra_f1' is not numeric", 2),
    (
        "DICOM without calibration",
        dicom_without_calibration,
        "DICOM without an ultrasound region calibration",
        2,
    ),
    ("pyradiomics params unknown key", params_file_unknown_key, "pyradiomics rejected", 2),
    ("unreachable MLflow", unreachable_mlflow, "127.0.0.1", 2),
    ("class too small for folds", too_few_for_folds, "needs at least 10 per class", 2),
    ("ring thinner than a pixel", ring_too_thin, "use a wider ring", 2),
    ("split column missing", unknown_split, "needs a 'split' column", 2),
    ("salt not from the environment", salt_in_config, "export HER2STUDY_SALT=... instead", 2),
    # issue 13: checks made before any extraction or fit, each with its own fix
    ("balance_on column missing", manifest_without_age, "or split.balance_on=null", 2),
    (
        "split column all train",
        with_args(features_case(split_all_train), "split.method=column"),
        "the 'split' column has no test cases",
        2,
    ),
    (
        "split column unknown value",
        with_args(features_case(split_unknown), "split.method=column"),
        "'valid' is not train/test",
        2,
    ),
    ("clinical column all NaN", features_case(age_all_missing), "'age' is empty", 2),
    ("feature NaN", features_case(feature_nan), "feature 'intra_f1' is missing (NaN)", 2),
    ("feature inf", features_case(feature_inf), "feature 'peri1mm_f2' is infinite", 2),
    ("duplicated feature column", duplicated_column, "'intra_f1' appears 2 times", 2),
    ("LASSO CV inside the CV folds", lasso_inside_cv_folds, "inside it needs at least 16", 2),
    ("3 positives, 2-fold nested CV", search_folds_too_many, "search.inner_folds=2 needs", 2),
    (
        "use_clinical without clinical columns",
        search_clinical_without_columns,
        "use_clinical=true, but there are no clinical columns",
        2,
    ),
    ("params YAML unreadable", params_file_unreadable, "cannot read the pyradiomics params", 2),
    (
        "clinical model column not read",
        clinical_model_column_not_read,
        "model.clinical.columns names ['bmi']",
        2,
    ),
    ("3-pixel tumour", image_case(three_pixel_tumour), "tumour mask is too small", 2),
    ("image zero outside the lesion", image_case(zero_outside_lesion), "region.fov=none", 2),
    ("interpolated float mask", image_case(interpolated_mask), "interpolated (resampled)", 2),
]
BEFORE_EXTRACTION = {  # checked before anything is extracted: no cache entry is written
    "balance_on column missing",
    "params YAML unreadable",
}


def _hashes(root):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name,setup,fragment,code", BAD, ids=[b[0] for b in BAD])
def test_bad_input(
    name, setup, fragment, code, make_cohort, tmp_path, monkeypatch, compose, caplog
):
    work = tmp_path / "work"
    work.mkdir()
    args = setup(make_cohort, tmp_path)
    inputs = _hashes(tmp_path / "cohort") if (tmp_path / "cohort").exists() else {}
    monkeypatch.chdir(work)
    cfg = (
        compose(*QUICK, *args)
        if "tracking=sqlite" not in args
        else compose(*[a for a in QUICK if a != "tracking=off"], *args)
    )
    with caplog.at_level(logging.ERROR, logger="her2study"):
        assert run(cfg) == code
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors  # one message, not a cascade
    assert fragment in errors[0]
    assert re.search(r"fix|\b(use|set|add|lower|check|start|choose|export|give)\b", errors[0])
    # nothing half-written: no results, no temporary files left in the cache
    assert not list(work.rglob("features.parquet")) and not list(work.rglob("table3.csv"))
    assert not [p for p in work.rglob("*.tmp")]
    if name in BEFORE_EXTRACTION:
        assert not list(work.rglob("*.json")), "extracted before the checks"
    if inputs:
        assert _hashes(tmp_path / "cohort") == inputs


def test_config_typo_names_the_key(compose):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as info:
        compose("selection.corr_treshold=0.8")
    assert "corr_treshold" in str(info.value.__cause__ or info.value)


def test_unknown_data_source_fails_at_compose_time(compose):
    """data.source is an enum in the schema: a typo stops composition, naming the choices
    (``python -m her2study`` maps that to exit 2)."""
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as info:
        compose("task=extract", "data.source=pacs")
    text = str(info.value.__cause__ or info.value)
    assert "'pacs'" in text and "synthetic, manifest, features" in text


HANDLED = [
    ("RGB image", "converted to grayscale"),
    ("anisotropic spacing", "anisotropic pixel spacing"),
    ("mask touching the edge", "touches the image edge"),
]


@pytest.mark.parametrize("name,fragment", HANDLED, ids=[h[0] for h in HANDLED])
def test_handled_input_is_logged(
    name, fragment, make_cohort, tmp_path, monkeypatch, compose, caplog
):
    from conftest import ellipse_case, write_nifti

    def edit(df, root):
        if name == "RGB image":
            img, _ = ellipse_case(seed=0)
            rgb = np.repeat(img.astype(np.uint8)[..., None], 3, axis=2)
            sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(root / "img/rgb.png"))
            df["image"] = df["image"].astype(object)
            df.loc[0, "image"] = "img/rgb.png"
            df["mask"] = df["mask"].astype(object)
            sitk.WriteImage(
                sitk.ReadImage(str(root / "img/C000_mask.nii.gz")), str(root / "img/m.png")
            )
            df.loc[0, "mask"] = "img/m.png"
            df["spacing_x_mm"] = [0.2] + [np.nan] * (len(df) - 1)
            df["spacing_y_mm"] = [0.2] + [np.nan] * (len(df) - 1)
        elif name == "mask touching the edge":
            img, m = ellipse_case(seed=0, center=(12.0, 1.0))
            write_nifti(img, root / "img/C000.nii.gz")
            write_nifti(m, root / "img/C000_mask.nii.gz")
        return df

    spacing = (0.1, 0.2) if name == "anisotropic spacing" else (0.2, 0.2)
    m = make_cohort(n=6, spacing=spacing, extra=edit)
    monkeypatch.chdir(tmp_path)
    cfg = compose(*QUICK, "task=extract", "data=manifest", f"data.manifest={m}")
    with caplog.at_level(logging.INFO):
        assert run(cfg) == 0
    assert fragment in caplog.text
    assert list(tmp_path.rglob("features.parquet"))


def test_unwritable_cache_is_a_clear_error(make_cohort, tmp_path, monkeypatch, compose, caplog):
    """A cache folder that cannot be created (a file stands in its way; CI runs as root, so
    permission bits would not stop it) gives one message and exit code 3, inputs untouched."""
    m = make_cohort(n=4)
    inputs = _hashes(tmp_path / "cohort")
    (tmp_path / "blocked").write_text("a file, not a folder")
    monkeypatch.chdir(tmp_path)
    cfg = compose(
        *QUICK,
        "task=extract",
        "data=manifest",
        f"data.manifest={m}",
        f"cache_dir={tmp_path / 'blocked'}",
    )
    with caplog.at_level(logging.ERROR, logger="her2study"):
        assert run(cfg) == 3
    assert "cannot write" in caplog.text and "writable folder" in caplog.text
    assert _hashes(tmp_path / "cohort") == inputs


@pytest.mark.parametrize(
    "kind,options,code,fragment",
    [
        ("disk full", "size=12k", 3, "No space left"),
        ("read-only", "ro,size=64k", 3, "Read-only file system"),
    ],
)
def test_full_or_read_only_cache(
    kind, options, code, fragment, make_cohort, tmp_path, tiny_mount, monkeypatch, compose, caplog
):
    m = make_cohort(n=6)
    inputs = _hashes(tmp_path / "cohort")
    cache = tiny_mount("cache", options)
    monkeypatch.chdir(tmp_path)
    cfg = compose(
        *QUICK, "task=extract", "data=manifest", f"data.manifest={m}", f"cache_dir={cache}"
    )
    with caplog.at_level(logging.ERROR, logger="her2study"):
        assert run(cfg) == code
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and fragment in errors[0] and "writable folder" in errors[0], errors
    assert _hashes(tmp_path / "cohort") == inputs
    assert not list(cache.rglob("*.tmp"))  # no partial cache entry left behind
    for entry in cache.rglob("*.json"):
        json.loads(entry.read_text())


@pytest.mark.parametrize("kind", ["under /proc", "under a file", "read-only"])
def test_output_folder_that_cannot_be_written(kind, tmp_path, tiny_mount):
    """Hydra makes the run folder before any handler of ours runs: the entry point checks it
    first. One line, exit 3, no traceback, the input untouched and nothing written."""
    import subprocess
    import sys

    args = features_file(tmp_path)
    inputs = _hashes(tmp_path)
    if kind == "under /proc":
        run_dir = "/proc/her2study_out/run"
    elif kind == "under a file":
        (tmp_path / "afile").write_text("a file, not a folder")
        inputs = _hashes(tmp_path)
        run_dir = str(tmp_path / "afile" / "run")
    else:
        run_dir = str(tiny_mount("ro", "ro,size=64k") / "run")
    res = subprocess.run(
        [sys.executable, "-m", "her2study", *args, "tracking=off", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 3, res.stderr[-2000:]
    assert "Traceback" not in res.stderr + res.stdout
    errors = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, errors
    assert "cannot write the output folder" in errors[0] and "hydra.run.dir=" in errors[0]
    assert _hashes(tmp_path) == inputs  # nothing written, input untouched


EXP_SETS_RUN_DIR = """# @package _global_
hydra:
  run:
    dir: {run_dir}/${{study}}
"""


@pytest.mark.parametrize("where", ["outputs/configs", "hydra.searchpath"])
def test_output_folder_set_in_an_experiment_file(where, tmp_path):
    """An experiment file (on the default search path ``outputs/configs``, or on a folder given
    with ``hydra.searchpath``) sets ``hydra.run.dir`` under a regular file: the entry point
    finds it before Hydra makes the folder. One line naming the file's setting, exit 3, no
    traceback, nothing written; ``hydra.run.dir`` on the command line is the fix."""
    from conftest import run_cli

    from her2study.__main__ import _output_dir_problem

    (tmp_path / "afile").write_text("a file, not a folder")
    configs = tmp_path / ("outputs/configs" if where == "outputs/configs" else "mine")
    (configs / "exp").mkdir(parents=True)
    exp = EXP_SETS_RUN_DIR.format(run_dir=tmp_path / "afile" / "run")
    (configs / "exp" / "blocked.yaml").write_text(exp)
    args = [a for a in features_file(tmp_path) if a != "+exp=paper"]
    args += ["+exp=blocked", "tracking=off"]
    if where == "hydra.searchpath":
        args.append(f"hydra.searchpath=[file://{configs}]")
    inputs = _hashes(tmp_path)
    res = run_cli(args, tmp_path, code=3, timeout=120)
    assert "Traceback" not in res.stderr + res.stdout
    errors = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, errors
    assert f"cannot write the output folder {tmp_path / 'afile' / 'run'}" in errors[0]
    assert "+exp=blocked" in errors[0] and "afile is a file" in errors[0]
    assert "hydra.run.dir=" in errors[0]
    assert _hashes(tmp_path) == inputs  # nothing written, the input untouched
    # the command line's folder wins over the file's: the fix the message names
    ok = [*args, f"hydra.run.dir={tmp_path / 'elsewhere'}"]
    assert _output_dir_problem(ok) is None


def test_output_folder_set_in_an_included_experiment_file(tmp_path, monkeypatch):
    """An experiment file whose defaults list includes one that sets hydra.run.dir is seen as
    well; the shipped experiment files set nothing of Hydra's, so they are not composed."""
    from her2study.__main__ import _may_set_hydra, _output_dir_problem

    (tmp_path / "afile").write_text("a file, not a folder")
    exp = tmp_path / "outputs" / "configs" / "exp"
    exp.mkdir(parents=True)
    (exp / "blocked.yaml").write_text(EXP_SETS_RUN_DIR.format(run_dir=tmp_path / "afile"))
    (exp / "outer.yaml").write_text("# @package _global_\ndefaults:\n  - blocked\n  - _self_\n")
    monkeypatch.chdir(tmp_path)
    problem = _output_dir_problem(["+exp=outer", "tracking=off"])
    assert problem is not None and "afile is a file" in problem and "+exp=outer" in problem
    assert _may_set_hydra(["outer"], ["+exp=outer"])
    for name in ("paper", "paper_exact", "search"):
        assert not _may_set_hydra([name], [f"+exp={name}"])
        assert _output_dir_problem([f"+exp={name}"]) is None


@pytest.mark.slow
def test_full_disk_names_the_file_and_leaves_no_partial_result_set(
    tmp_path, tiny_mount, monkeypatch, compose, caplog
):
    """The results fill a tiny disk: exit 3 naming the file being written; the result set is
    all or nothing (nothing here), the input untouched."""
    args = features_file(tmp_path)
    inputs = _hashes(tmp_path)
    out = tiny_mount("out", "size=48k")
    monkeypatch.chdir(out)
    cfg = compose(*QUICK, *args)
    with caplog.at_level(logging.ERROR, logger="her2study"):
        assert run(cfg) == 3
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "No space left" in errors[0], errors
    assert re.search(r"cannot write \S*outputs/paper/\S+\.(csv|md|png|html):", errors[0]), errors
    assert not list(out.rglob("table3.csv")) and not list(out.rglob("*.tmp"))
    digest = hashlib.sha256((tmp_path / "f.csv").read_bytes()).hexdigest()
    assert digest == inputs[tmp_path / "f.csv"]
