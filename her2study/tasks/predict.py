"""task=predict: apply an exported model to new cases -> ``predictions.csv``.

``python -m her2study task=predict predict.model_uri=<model folder | runs:/... | models:/...>
data=manifest data.manifest=new_cases.csv`` (or ``data=features data.features_table=...``).

The model is read by :func:`her2study.model_artifact.load_model`, which accepts only the model
folder written by ``task=export`` (an MLflow pyfunc model with the her2study marker) and refuses a
bare ``.joblib``/``.pkl`` file or any other MLflow model before reading it. The model's own
extraction settings (pyradiomics parameters, regions, field of view), feature columns and
threshold come with it (its card), so new cases are processed exactly as the training cases were.

Labels are not needed (``load_cohort(require_labels=False)``); when the manifest has them, they
are copied to the output. A model that harmonises across devices (ComBat, card ``site_column``)
needs each new case's device in that column of the manifest or table (``data.site_column``
names another); without it, or with a device the model refuses (``harmonise_unseen=error``), the
run stops before any case is processed (exit 2). A device the model was not fitted on is
otherwise harmonised to the training data from its own cases' features, all of them together
(so each one's prediction depends on the others given with it; a lone case of such a device
fails with the reason). Cases are checked one by one: a case that fails (missing or unreadable
file, empty mask, too small a region, missing clinical value, non-finite feature) is listed in
``predictions.csv`` with ``status=failed`` and the reason, never dropped silently. The user's files
are only read: a copy of the manifest with absolute paths is written to the run folder.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from her2study.cohort.manifest import DEFAULT_MAX_IMAGE_PIXELS, load_cohort
from her2study.errors import ConfigError
from her2study.tasks.common import output_dir, result_set, write_atomic

log = logging.getLogger(__name__)


def predict_config(cfg):
    pc = cfg.get("predict") if hasattr(cfg, "get") else getattr(cfg, "predict", None)
    if pc is None or not pc.get("model_uri"):
        raise ConfigError(
            "task=predict needs predict.model_uri=<the model folder written by task=export, or "
            "an MLflow models:/... or runs:/... URI of one>"
        )
    return pc


def _absolute(df: pd.DataFrame, root: Path, columns) -> pd.DataFrame:
    df = df.copy()
    for col in columns:
        if col in df.columns:
            df[col] = [
                str((root / str(v).strip()).resolve()) if isinstance(v, str) and v.strip() else v
                for v in df[col]
            ]
    return df


def check_devices(path: Path, card: dict, site_column: str | None) -> None:
    """A model that harmonises across devices needs each new case's device: the file must have
    the column, and devices the model was not fitted on are refused when the model says so
    (``selection.harmonise_unseen=error``). Read before any case is processed."""
    if not card.get("site_column"):
        return
    from her2study.cohort.table import read_table

    devices = [str(d) for d in card["harmonise"]["devices"]]
    df = read_table(path)
    if site_column not in df.columns:
        raise ConfigError(
            f"{str(path)!r} has no '{site_column}' column: the model harmonises features "
            f"across devices (ComBat fitted on devices {', '.join(devices)}) and needs each new "
            f"case's device -> fix: add a '{site_column}' column naming each case's device or "
            "site, or name the column that holds it with data.site_column=<column>"
        )
    given = df[site_column].dropna().astype(str).str.strip()
    unseen = sorted(set(given[given != ""]) - set(devices))
    if unseen and card["harmonise"].get("unseen") == "error":
        raise ConfigError(
            f"{str(path)!r}: device(s) {unseen} in column '{site_column}' were not among the "
            f"model's training devices ({', '.join(devices)}) and this model refuses other "
            "devices (selection.harmonise_unseen=error) -> fix: predict only cases of those "
            "devices, or export a model with selection.harmonise_unseen=reference"
        )


def _harmonise_inputs(X, table, card, site_column, failed) -> pd.DataFrame:
    """The device column the model reads; cases of an unseen device it cannot harmonise (fewer
    than 2 of them with features) are moved to ``failed``."""
    site = card["site_column"]
    given = table.loc[X.index, site_column]
    for cid in X.index[given.isna() | (given.astype(str).str.strip() == "")]:
        failed[cid] = f"no {site_column} given: the model needs each case's device"
    X = X.assign(**{site: given.astype(str).str.strip()}).loc[lambda d: ~d.index.isin(failed)]
    devices = set(map(str, card["harmonise"]["devices"]))
    counts = X[site].value_counts()
    for device, n in counts.items():
        if device in devices:
            continue
        log.warning(
            "device %s was not among the model's training devices: its %d case(s) are "
            "harmonised to the training data together (ComBat reference batch, from their own "
            "features, no labels): each one's prediction depends on the others given with it",
            device,
            n,
        )
        if n < 2:
            for cid in X.index[X[site] == device]:
                failed[cid] = (
                    f"device {device!r} was not among the model's training devices and this is "
                    "its only case: harmonising a new device needs at least 2 of its cases "
                    "predicted together"
                )
    return X.loc[[c for c in X.index if c not in failed]]


def checked_cohort(
    manifest: Path, data_cfg, clinical: list[str], out: Path, site_column: str | None = None
):
    """(cohort of the good cases, failed case -> reason, labels or None, all ids in order).

    Problems of the manifest as a whole (missing columns, duplicate ids) raise
    :class:`CohortError`; a case's own problems put it in ``failed``.
    """
    case_col, label_col = data_cfg.case_column, data_cfg.label_column
    cohort = load_cohort(
        manifest,
        case_column=case_col,
        label_column=label_col,
        spacing_mm=data_cfg.spacing_mm,
        mask_label=data_cfg.mask_label,
        clinical_columns=clinical,
        require_labels=False,
        on_error="collect",
        ignore_columns=("mask_reader2", "split"),  # not needed to apply a model
        max_image_pixels=getattr(data_cfg, "max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS),
        site_column=site_column,
    )
    df = pd.read_csv(manifest, dtype={case_col: str})
    df[case_col] = df[case_col].astype(str).str.strip()
    labels = None
    if label_col in df.columns:
        labels = pd.to_numeric(df[label_col], errors="coerce").set_axis(df[case_col])
    copy = _absolute(df, Path(manifest).resolve().parent, ("image", "mask", "mask_reader2"))
    copy.to_csv(out / "manifest_checked.csv", index=False)
    return cohort, dict(cohort.failed), labels, list(df[case_col])


def features_from_images(cohort, card: dict, cfg):
    """Feature rows of the cohort's cases with the model's extraction settings; failures."""
    from her2study.features.extraction import extract_features
    from her2study.regions import region_specs

    ext = card["extraction"]
    specs = region_specs(
        True, list(ext.get("ring_widths_mm") or []), list(ext.get("bands_mm") or [])
    )
    specs = [s for s in specs if s.name in set(ext["regions"])]
    fs = extract_features(
        cohort,
        specs,
        ext["params"],
        cfg.cache_dir,
        fov_mode=ext["fov"],
        mask_label=ext.get("mask_label"),
        n_jobs=cfg.execution.n_jobs,
        backend=cfg.execution.backend,
        progress=cfg.execution.progress,
        min_coverage=cfg.region.min_coverage,
        on_error="collect",
    )
    return fs.table, fs.failed


def _inputs(cfg, card: dict, clinical: list[str], site_column, folder: Path):
    """The new cases' model inputs: (X, failed case -> reason, labels or None, all ids in order,
    the cases' table); a copy of the manifest with absolute paths is written to ``folder``."""
    data = cfg.data
    columns = list(card["columns"])
    if data.source == "features":
        check_devices(Path(data.features_table), card, site_column)
        needed = list(dict.fromkeys(columns + clinical))
        return _from_table(Path(data.features_table), data, needed)
    if data.source == "manifest":
        if not data.manifest:
            raise ConfigError("data=manifest needs data.manifest=<new cases.csv>")
        manifest = Path(data.manifest)
    else:
        from her2study.cohort.source import ensure_synthetic

        manifest = ensure_synthetic(data, n_jobs=cfg.execution.n_jobs)
    if not manifest.is_file():
        raise ConfigError(f"data.manifest: no file at {str(manifest)!r}")
    check_devices(manifest, card, site_column)
    cohort, failed, labels, order = checked_cohort(manifest, data, clinical, folder, site_column)
    X = pd.DataFrame()
    if cohort.cases:
        X, more = features_from_images(cohort, card, cfg)
        failed.update(more)
    return X, failed, labels, order, cohort.table


def _rows(pred: pd.DataFrame, order, failed: dict, labels, card: dict) -> pd.DataFrame:
    """One row per case, in the input's order: probability and class, or the reason it failed."""
    rows = []
    for cid in order:
        row = {"case_id": cid}
        if cid in pred.index:
            cls = int(pred.at[cid, "predicted_class"])
            row.update(
                probability=float(pred.at[cid, "probability"]),
                **{"class": cls},
                predicted=card.get("positive_class") if cls else card.get("negative_class"),
                status="ok",
                problem="",
            )
        else:
            row.update(
                probability=np.nan,
                **{"class": pd.NA},
                predicted="",
                status="failed",
                problem=failed.get(cid, "not processed"),
            )
        if labels is not None and cid in labels.index:
            row["label"] = labels[cid]
        rows.append(row)
    return pd.DataFrame(rows)


def run(cfg) -> int:
    from her2study.model_artifact import describe, load_model, model_inputs

    pc = predict_config(cfg)
    model, card = load_model(str(pc.model_uri), cfg.tracking.tracking_uri)
    log.info("%s: %s", pc.model_uri, describe(card))
    out = output_dir(cfg)
    columns = list(card["columns"])
    # the covariates a ComBat step protects come from the manifest like clinical columns
    clinical = list(card.get("clinical_columns") or [])
    clinical += [c for c in card.get("covariate_columns") or [] if c not in clinical]
    given = pc.get("threshold") is not None
    threshold = float(pc.threshold if given else card["threshold"])
    site_column = None
    if card.get("site_column"):
        site_column = str(cfg.data.get("site_column") or card["site_column"])
    target = Path(pc.output) if pc.get("output") else None  # a file the user placed
    with result_set(out) as stage:  # moved into out at the end: no partial result set
        X, failed, labels, order, meta = _inputs(cfg, card, clinical, site_column, stage)
        if clinical and len(X):
            X = X.join(meta[[c for c in clinical if c not in X.columns]])
        missing = [c for c in columns if c not in X.columns] if len(X) else []
        if missing:
            raise ConfigError(
                f"{len(missing)} model column(s) absent from the new cases' features, "
                f"e.g. {missing[:3]}: were they extracted with other settings?"
            )
        if len(X):
            numeric = [c for c in model_inputs(card) if c != card.get("site_column")]
            X = X[numeric]
            bad = ~np.isfinite(X.to_numpy(dtype=float)).all(axis=1)
            for cid in X.index[bad]:
                cols = [c for c in numeric if not np.isfinite(float(X.at[cid, c]))]
                failed[cid] = f"non-finite feature value(s): {cols[:5]}"
            X = X[~bad]
            if site_column:
                X = _harmonise_inputs(X, meta, card, site_column, failed)
        pred = model.predict(X, params={"threshold": threshold}) if len(X) else pd.DataFrame()
        table = _rows(pred, order, failed, labels, card)
        if target is None:
            table.to_csv(stage / "predictions.csv", index=False)
        else:  # a file the user named, written atomically
            write_atomic(target, table.to_csv(index=False))
        n_ok = int((table["status"] == "ok").sum()) if len(table) else 0
        harmonise = card.get("harmonise") or {}
        (stage / "predict_card.json").write_text(
            json.dumps(
                {
                    "model_uri": str(pc.model_uri),
                    "her2study_version_of_model": card.get("her2study_version"),
                    "threshold": threshold,
                    "n_ok": n_ok,
                    "n_failed": len(table) - n_ok,
                    **(
                        {
                            "harmonise": {
                                "site_column": site_column,
                                "training_devices": harmonise["devices"],
                                "unseen": harmonise["unseen"],
                            }
                        }
                        if site_column
                        else {}
                    ),
                },
                indent=2,
            )
            + "\n"
        )
    target = target if target is not None else out / "predictions.csv"
    note = " (model trained on a SYNTHETIC cohort)" if card.get("data", {}).get("synthetic") else ""
    log.info(
        f"predictions: {n_ok} of {len(table)} cases -> {target}{note}; threshold "
        f"{threshold:.4f} ({'given' if given else 'exported'})"
    )
    for cid, why in failed.items():
        log.info(f"  FAILED {cid}: {why}")
    if not n_ok:  # the table lists every case with its reason: it is kept as a result set
        raise ConfigError(
            f"no case could be predicted ({len(table)} failed; reasons in {target}): fix the "
            "inputs named there, or check that the manifest matches the model's regions"
        )
    return 0


def _from_table(path: Path, data, columns: list[str]):
    from her2study.cohort.table import read_table

    if not path.is_file():
        raise ConfigError(f"data.features_table: no file at {str(path)!r}")
    df = read_table(path)
    if data.case_column not in df.columns:
        raise ConfigError(
            f"features table {str(path)!r} lacks the case column '{data.case_column}'"
        )
    df[data.case_column] = df[data.case_column].astype(str).str.strip()
    df = df.set_index(data.case_column)
    labels = (
        pd.to_numeric(df[data.label_column], errors="coerce")
        if data.label_column in df.columns
        else None
    )
    failed: dict[str, str] = {}
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ConfigError(
            f"features table lacks {len(missing)} model column(s), e.g. {missing[:3]}"
        )
    X = df[columns].apply(pd.to_numeric, errors="coerce")
    return X, failed, labels, list(df.index), df
