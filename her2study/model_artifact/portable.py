"""A study's fitted pipeline as a model file holds it: only what predicting a new case needs.

Two steps of a study's signature cannot travel as they were fitted:

* the contour-robustness filter (:class:`~her2study.selection.robustness.RobustnessFilter`)
  needs each case's features from perturbed masks, but once fitted it is a column mask: it is
  dropped and the columns it kept become the model's input columns, so predicting needs neither
  perturbed masks nor their features;
* the ComBat step (:class:`~her2study.models.harmonise.ComBatHarmoniser`) looks each case's
  device up by case id: it is replaced by its portable copy (the same per-device statistics, no
  case ids), which reads the device from an input column (the card's ``site_column``) and the
  protected covariates from theirs.

Every other step is kept as fitted.
"""

from __future__ import annotations

from sklearn.pipeline import Pipeline

from her2study.models.harmonise import ComBatHarmoniser
from her2study.selection.robustness import RobustnessFilter, robustness_by_region


def portable_pipeline(pipeline, columns, site_column: str | None = None) -> tuple[object, dict]:
    """(the pipeline to store, the card entries describing its inputs) for a fitted ``pipeline``
    whose input columns are ``columns``.

    The card entries: ``columns`` (the feature columns the stored pipeline takes, in order), and
    when the pipeline harmonises, ``site_column``, ``covariate_columns`` and ``harmonise`` (the
    devices it was fitted on, what it does with another one); when it filtered by contour
    robustness, ``robustness`` (threshold, ICC kind, features kept per region).
    """
    columns = [str(c) for c in columns]
    if not isinstance(pipeline, Pipeline):
        return pipeline, {"columns": columns}
    steps = []
    card: dict = {}
    for name, step in pipeline.steps:
        if isinstance(step, RobustnessFilter):
            if steps:
                raise ValueError("a robustness step must be the pipeline's first step")
            columns = [str(c) for c in step.get_feature_names_out()]
            card["robustness"] = {
                "threshold": float(step.threshold),
                "icc_kind": str(step.kind),
                "n_perturbations": int(step.n_perturbations_),
                "fitted_on": "the training rows of the fit (ICC across contour perturbations)",
                "by_region": [
                    {k: v.item() if hasattr(v, "item") else v for k, v in row.items()}
                    for row in robustness_by_region(step).to_dict(orient="records")
                ],  # plain numbers (the card is JSON)
                "at_prediction": "a column mask: the kept original features only",
            }
            continue
        if isinstance(step, ComBatHarmoniser):
            if not site_column:
                raise ValueError("a pipeline with a ComBat step needs site_column to be stored")
            if steps:
                raise ValueError("a ComBat step must come first (after the robustness filter)")
            step = step.portable(site_column)
            columns = [str(c) for c in step.feature_names_in_]
            card["site_column"] = str(site_column)
            card["covariate_columns"] = list(step.covariate_names_)
            card["harmonise"] = {
                "method": "ComBat (combatlearn; Fortin et al. 2018, covariates protected)"
                if step.covariate_names_
                else "ComBat (combatlearn; Johnson et al. 2007)",
                "fitted_on": "the training rows of the fit (batch = device)",
                "devices": [str(d) for d in step.batches_],
                "unseen": str(step.unseen),
                "discrete_covariates": sorted(step.discrete_levels_),
            }
        steps.append((name, step))
    card["columns"] = columns
    if card.keys() == {"columns"}:  # nothing to replace: the fitted object itself (its cached
        return pipeline, card  # skops file is reused by the model logging)
    return Pipeline(steps), card


def model_inputs(card: dict) -> list[str]:
    """Every input column of a model: its features, then the device column and the protected
    covariates when it harmonises."""
    columns = [str(c) for c in card["columns"]]
    extra = []
    if card.get("site_column"):
        extra.append(str(card["site_column"]))
    extra += [str(c) for c in card.get("covariate_columns") or [] if c not in columns]
    return columns + extra
