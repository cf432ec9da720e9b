"""The fixed sets of values that config keys take, as enums (``Choice``).

A value outside the set fails when Hydra composes the config, naming the allowed values. Members
compare equal to, print and format as their string value, so code may compare with plain strings.
"""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """A fixed set of string values; compares equal to, prints and formats as its value."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


def _choice(name: str, *values: str, **named: str) -> type[Choice]:
    members = {v: v for v in values} | named
    return Choice(name, members, module=__name__, qualname=name)  # type: ignore[call-overload]


DataSource = _choice("DataSource", "synthetic", "manifest", "features")
ImageFormat = _choice("ImageFormat", "nifti", "png")
Fov = _choice("Fov", "nonzero", "none")
SplitMethod = _choice("SplitMethod", "block", "column", "site", "leave_one_site_out")
CorrMethod = _choice("CorrMethod", "spearman", "pearson")
CorrRule = _choice("CorrRule", "mean_abs_corr", "later", "target")
MWCorrection = _choice("MWCorrection", "fdr_bh", "bonferroni")
LassoRule = _choice("LassoRule", "min", "1se")
LassoScoring = _choice("LassoScoring", "neg_log_loss", "roc_auc")
ICCKind = _choice("ICCKind", ICC1_1="ICC(1,1)", ICC2_1="ICC(2,1)", ICC3_1="ICC(3,1)")
ModelName = _choice("ModelName", "logistic", "lasso_logistic", "ridge", "svm", "random_forest")
RegionKind = _choice("RegionKind", "tumour", "tumour+ring", "ring", "tumour+band", "band")
Harmonise = _choice("Harmonise", "combat")
UnseenSite = _choice("UnseenSite", "reference", "error")
ThresholdRule = _choice("ThresholdRule", "youden", "fixed")
ThresholdData = _choice("ThresholdData", "out_of_fold", "apparent")
RadScoreMode = _choice("RadScoreMode", "cross_fitted", "in_sample")
ClinicalMethod = _choice("ClinicalMethod", "stepwise", "prespecified", "penalised")
AUCInterval = _choice("AUCInterval", "delong", "bootstrap")
Backend = _choice("Backend", "loky", "threading", "multiprocessing", "dask", "ray")
Sampler = _choice("Sampler", "tpe", "random")
Pruner = _choice("Pruner", "none", "median", "successive_halving")
ExportSource = _choice("ExportSource", "study", "config")
TaskName = _choice(
    "TaskName", "synth", "extract", "paper", "compare", "search", "export", "predict"
)
