"""task=predict: apply an exported model to new cases -> ``predictions.csv``.

``python -m her2study task=predict predict.model_uri=<model folder | runs:/... | models:/...>
data=manifest data.manifest=new_cases.csv`` (or ``data=features data.features_table=...``).

The model is read by :func:`her2study.model_artifact.load_model`, which accepts only the model
folder written by ``task=export`` (an MLflow pyfunc model with the her2study marker) and refuses a
bare ``.joblib``/``.pkl`` file or any other MLflow model before reading it. The model's own
extraction settings (pyradiomics parameters, regions, field of view), feature columns and
threshold come with it (its card), so new cases are processed exactly as the training cases were.

Labels are not needed (``load_cohort(require_labels=False)``); when the manifest has them, they
are copied to the output. Cases are checked one by one: a case that fails (missing or unreadable
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


def checked_cohort(manifest: Path, data_cfg, clinical: list[str], out: Path):
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


def run(cfg) -> int:
    from her2study.model_artifact import describe, load_model

    pc = predict_config(cfg)
    model, card = load_model(str(pc.model_uri), cfg.tracking.tracking_uri)
    log.info("%s: %s", pc.model_uri, describe(card))
    out = output_dir(cfg)
    target = Path(pc.output) if pc.get("output") else None  # a file the user placed
    with result_set(out) as stage:  # moved into out at the end: no partial result set
        columns = list(card["columns"])
        clinical = list(card.get("clinical_columns") or [])
        given = pc.get("threshold") is not None
        threshold = float(pc.threshold if given else card["threshold"])
        data = cfg.data
        if data.source == "features":
            X, failed, labels, order = _from_table(Path(data.features_table), data, columns)
        else:
            if data.source == "manifest":
                if not data.manifest:
                    raise ConfigError("data=manifest needs data.manifest=<new cases.csv>")
                manifest = Path(data.manifest)
            else:
                from her2study.cohort.source import ensure_synthetic

                manifest = ensure_synthetic(data, n_jobs=cfg.execution.n_jobs)
            if not manifest.is_file():
                raise ConfigError(f"data.manifest: no file at {str(manifest)!r}")
            cohort, failed, labels, order = checked_cohort(manifest, data, clinical, stage)
            X = pd.DataFrame()
            if cohort.cases:
                X, more = features_from_images(cohort, card, cfg)
                failed.update(more)
                if clinical:
                    X = X.join(cohort.table[clinical])
        missing = [c for c in columns if c not in X.columns] if len(X) else []
        if missing:
            raise ConfigError(
                f"{len(missing)} model column(s) absent from the new cases' features, "
                f"e.g. {missing[:3]}: were they extracted with other settings?"
            )
        if len(X):
            X = X[columns]
            bad = ~np.isfinite(X.to_numpy(dtype=float)).all(axis=1)
            for cid in X.index[bad]:
                cols = [c for c in columns if not np.isfinite(float(X.at[cid, c]))]
                failed[cid] = f"non-finite feature value(s): {cols[:5]}"
            X = X[~bad]
        pred = model.predict(X, params={"threshold": threshold}) if len(X) else pd.DataFrame()
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
        table = pd.DataFrame(rows)
        if target is None:
            table.to_csv(stage / "predictions.csv", index=False)
        else:  # a file the user named, written atomically
            write_atomic(target, table.to_csv(index=False))
        n_ok = int((table["status"] == "ok").sum()) if len(table) else 0
        (stage / "predict_card.json").write_text(
            json.dumps(
                {
                    "model_uri": str(pc.model_uri),
                    "her2study_version_of_model": card.get("her2study_version"),
                    "threshold": threshold,
                    "n_ok": n_ok,
                    "n_failed": len(table) - n_ok,
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
    return X, failed, labels, list(df.index)
