"""Typed configuration schemas, registered in Hydra's ConfigStore.

YAML files under ``conf/`` give the values; these dataclasses give the types, so that a typo or a
wrong type fails when Hydra composes the config, naming the key. The pyradiomics parameter block
stays a plain mapping that pyradiomics' own schema validates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore

from her2study.cohort.synthetic import SyntheticSpec
from her2study.search_schema import PredictConfig, SearchConfig


@dataclass
class DataConfig:
    """Where the cohort comes from and how to read it."""

    source: str = "synthetic"  # synthetic | manifest | features
    manifest: Optional[str] = None  # CSV, one row per lesion; paths relative to it
    features_table: Optional[str] = None  # CSV/Parquet replacing images (source=features)
    case_column: str = "case_id"
    label_column: str = "label"  # binary outcome, 1 = HER2-low, 0 = HER2-zero by default
    positive_class: str = "HER2-low"  # what label 1 means, for tables and figures
    negative_class: str = "HER2-zero"
    spacing_mm: Optional[float] = None  # cohort-wide pixel spacing for PNG/JPEG/BMP/TIFF
    mask_label: Optional[int] = None  # label value to use in multi-label masks
    clinical_columns: List[str] = field(default_factory=list)  # manifest columns used as clinical
    pseudonymise: bool = False  # replace case ids by salted hashes before anything is written
    pseudonym_salt: Optional[str] = "${oc.env:HER2STUDY_SALT,null}"  # secret; env HER2STUDY_SALT
    synthetic: SyntheticSpec = field(default_factory=SyntheticSpec)
    synthetic_dir: str = "${cache_dir}/synthetic"  # where the synthetic cohort is written


@dataclass
class RegionConfig:
    """Tumour and peritumoral regions, in millimetres from the mask boundary."""

    include_intra: bool = True  # the tumour mask itself
    ring_widths_mm: List[float] = field(default_factory=lambda: [1.0, 2.0])  # rings 0 < d <= w
    bands_mm: List[List[float]] = field(default_factory=list)  # extra bands [inner, outer]
    fov: str = "nonzero"  # clip rings to: nonzero (image > 0) | none
    min_coverage: float = 0.8  # warn when a clipped ring keeps less of its full annulus
    reader2: bool = False  # also extract from mask_reader2 (columns reader2__<name>) for ICC
    overlays: int = 0  # write this many QA overlay PNGs (task=extract)


@dataclass
class ExtractorConfig:
    """PyRadiomics settings: a params file used as is, or the inline three-key block."""

    name: str = "custom"
    params_file: Optional[str] = None  # a pyradiomics params YAML; overrides `params`
    params: Dict[str, Any] = field(default_factory=dict)  # setting / imageType / featureClass


@dataclass
class SplitConfig:
    """Training/test split (the paper: block randomisation, block size 10, age-matched)."""

    method: str = "block"  # block | column (the manifest's own split column)
    test_size: float = 0.2584  # 54 of 209
    block_size: int = 10
    balance_on: Optional[str] = "age"  # order by this within class before blocking; null = none


@dataclass
class SelectionConfig:
    """Feature selection inside each fit: z-score, correlation, Mann-Whitney, LASSO-CV."""

    corr_threshold: float = 0.9  # drop one of each pair with |rho| above this
    corr_method: str = "spearman"  # spearman | pearson
    corr_rule: str = "mean_abs_corr"  # which of a pair goes: the one more correlated overall
    mw_alpha: float = 0.05  # keep features with Mann-Whitney p below this
    mw_correction: Optional[str] = None  # null | fdr_bh | bonferroni
    lasso_cv: int = 10  # folds for choosing lambda
    lasso_rule: str = "min"  # min | 1se
    lasso_scoring: str = "neg_log_loss"  # neg_log_loss (deviance, as glmnet) | roc_auc
    lasso_n_lambdas: int = 20
    max_features: Optional[int] = None  # cap on LASSO-selected features
    icc_threshold: Optional[float] = None  # drop features with reader-1 vs reader-2 ICC below
    icc_kind: str = "ICC(2,1)"  # ICC(2,1) absolute agreement | ICC(3,1) consistency


@dataclass
class ClinicalConfig:
    """Clinical model: univariable screening, then multivariable logistic regression."""

    columns: Optional[List[str]] = None  # null = data.clinical_columns
    univariable_p: float = 0.05
    multivariable_p: float = 0.05


@dataclass
class NomogramConfig:
    """Rad-score of one ring signature + the clinical factors in one logistic model."""

    signature: str = "auto"  # auto = best training cross-validated AUC among ring signatures
    vif_limit: float = 5.0  # warn above this variance inflation factor (paper: all < 1.2)


@dataclass
class ModelConfig:
    """The classifier on the selected radiomics features."""

    name: str = "logistic"  # logistic | lasso_logistic | ridge | svm | random_forest
    params: Dict[str, Any] = field(default_factory=dict)  # passed to the estimator
    clinical: ClinicalConfig = field(default_factory=ClinicalConfig)
    nomogram: NomogramConfig = field(default_factory=NomogramConfig)


@dataclass
class EvaluationConfig:
    """How predictions are judged."""

    threshold: str = "youden"  # youden (chosen on training) | fixed
    fixed_threshold: float = 0.5
    ci: str = "delong"  # delong | bootstrap
    n_boot: int = 2000
    hl_groups: int = 10
    dca_max_threshold: float = 0.99
    net_benefit_at: List[float] = field(default_factory=lambda: [0.3, 0.5, 0.7])
    cv_folds: int = 5  # training-set CV used to pick the nomogram's signature


@dataclass
class ExecutionConfig:
    """How work is spread over cores or a cluster."""

    n_jobs: int = 2  # parallel cases; -1 = all cores
    backend: str = "loky"  # joblib backend: loky | threading | dask | ray
    progress: bool = True  # show a progress bar on long work


@dataclass
class TrackingConfig:
    """MLflow tracking."""

    enabled: bool = True
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "${study}"
    log_model: bool = True


@dataclass
class Her2StudyConfig:
    """The whole run."""

    task: str = "extract"  # synth | extract | paper | search | export | predict | compare
    study: str = "her2study"  # study name: MLflow experiment, Optuna study
    seed: int = 42
    cache_dir: str = ".her2study_cache"  # features cache and synthetic cohort
    data: DataConfig = field(default_factory=DataConfig)
    region: RegionConfig = field(default_factory=RegionConfig)
    extractor: ExtractorConfig = field(default_factory=ExtractorConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def register_configs() -> None:
    """Register the schemas so that ``conf/config.yaml`` can use them as defaults."""
    cs = ConfigStore.instance()
    cs.store(name="her2study_schema", node=Her2StudyConfig)
    cs.store(group="data", name="data_schema", node=DataConfig)
    cs.store(group="region", name="region_schema", node=RegionConfig)
    cs.store(group="extractor", name="extractor_schema", node=ExtractorConfig)
    cs.store(group="tracking", name="tracking_schema", node=TrackingConfig)
    cs.store(group="split", name="split_schema", node=SplitConfig)
    cs.store(group="selection", name="selection_schema", node=SelectionConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="evaluation", name="evaluation_schema", node=EvaluationConfig)
    cs.store(group="search", name="search_schema", node=SearchConfig)
    cs.store(group="execution", name="execution_schema", node=ExecutionConfig)
