"""Typed configuration schemas, registered in Hydra's ConfigStore.

YAML files under ``conf/`` give the values; these dataclasses give the types, so that a typo, a
wrong type or a value outside a fixed set of choices fails when Hydra composes the config, naming
the key and the allowed values. Every choice among fixed values is an :class:`Choice` enum; tasks
and models are Hydra groups (``conf/task/``, ``conf/model/``) whose files carry ``_target_``.
The pyradiomics parameter block stays a plain mapping that pyradiomics' own schema validates.

This module imports no image, model or tracking library: it is the bottom of the import graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from her2study.choices import (
    AUCInterval,
    Backend,
    ClinicalMethod,
    CorrMethod,
    CorrRule,
    DataSource,
    Fov,
    Harmonise,
    ICCKind,
    ImageFormat,
    LassoRule,
    LassoScoring,
    ModelName,
    MWCorrection,
    RadScoreMode,
    RegionKind,
    SplitMethod,
    TaskName,
    ThresholdData,
    ThresholdRule,
    UnseenSite,
)
from her2study.search_schema import PredictConfig, SearchConfig


@dataclass
class SyntheticSpec:
    """Everything that determines a synthetic cohort; the same spec gives identical arrays."""

    # --- cohort ---
    n_cases: int = 209  # number of lesions (one per case)
    n_positive: Optional[int] = None  # label-1 cases; None -> round(n_cases * 129 / 209)
    seed: int = 2024  # master seed; case i uses SeedSequence(seed).spawn(...)[i]
    # --- image geometry ---
    spacing_x_mm: float = 0.2  # pixel spacing, lateral (columns), mm
    spacing_y_mm: float = 0.2  # pixel spacing, axial = depth (rows), mm
    fov_width_mm: float = 48.0  # field of view, lateral, mm (240 px at 0.2 mm)
    fov_depth_mm: float = 40.0  # field of view, depth, mm (200 px at 0.2 mm)
    image_format: ImageFormat = ImageFormat.nifti  # nifti (spacing in header) | png (in manifest)
    # --- class signal (the known right answer) ---
    band_inner_mm: float = 0.0  # signal band starts this far outside the lesion boundary, mm
    # (the band phantom, data=band_phantom: 1.5-2.5 mm, intra_strength 0, er_signal false)
    band_outer_mm: float = 1.0  # ... and ends here (band = inner < d <= outer), mm
    band_strength: float = 3.0  # mean echogenicity rise in the band of label-1 cases, dB (moderate:
    # no signature separates the training set perfectly)
    band_texture: float = 0.6  # weight (0..1) of the coarse band texture at factor g = 1
    intra_strength: float = 0.3  # extra intratumoral heterogeneity of label-0 cases, dB (SD; weak)
    effect_cv: float = 0.5  # coefficient of variation of the per-case effect factors
    er_signal: bool = True  # ER % drawn by class (weak signal) instead of the pooled mixture
    # --- readers ---
    reader1_perturb_mm: float = 0.1  # RMS of reader 1's smooth boundary deviation, mm
    reader2_perturb_mm: float = 0.3  # RMS of reader 2's smooth boundary deviation, mm
    # --- lesion appearance (class-independent) ---
    lesion_contrast_db: float = 24.0  # mean lesion echogenicity below glandular tissue, dB
    lesion_heterogeneity_db: float = 2.0  # mean base internal heterogeneity (both classes), dB
    irregularity: float = 0.08  # amplitude of the radial harmonics of the lesion outline
    not_parallel_prob: float = 0.78  # lesion long axis tilted away from the skin line
    spiculation_prob: float = 0.35  # lesion has thin radial spikes (outside the mask)
    shadowing_prob: float = 0.51  # posterior acoustic shadowing (manifest posterior_shadowing)
    enhancement_prob: float = 0.35  # posterior enhancement, among lesions without shadowing
    calcification_prob: float = 0.32  # microcalcifications inside the lesion
    # --- acquisition ---
    psf_axial_mm: float = 0.25  # point-spread function SD, axial, mm
    psf_lateral_mm: float = 0.5  # point-spread function SD, lateral, mm
    dynamic_range_db: float = 50.0  # log-compression display range, dB
    gain_jitter_db: float = 1.5  # per-case overall gain SD, dB (machine/operator variation)
    noise_floor_db: float = -50.0  # electronic noise relative to glandular tissue, dB
    # --- devices (off by default: 0 keeps the cohort bit-identical, no device column) ---
    devices: int = 0  # scanners A, B, ... (at most 4): each its own speckle size, gain and blur
    device_strength: float = 1.0  # scales every device's departure from device A (0 = none)
    device_label_shift: float = 0.0  # share of each class moved to one device (0 = balanced;
    # > 0 confounds device and label: label 1 to device A, label 0 to the last device)
    # --- planted contour-sensitive rim (off by default: 0 keeps the cohort bit-identical) ---
    rim_strength_db: float = 0.0  # label-1 cases: a bright rim of this many dB (x a per-case
    # factor) on reader 1's contour, inside the mask (cohort/contour.py; data=contour_phantom)
    rim_width_mm: float = 0.2  # the rim's width inside the drawn contour, mm


@dataclass
class PerturbSpec:
    """Contour perturbations per case (``selection.robustness_threshold``), in millimetres."""

    n: int = 5  # perturbed masks per case
    grow_mm: float = 0.2  # erosion/dilation drawn uniformly in [-grow_mm, +grow_mm]
    displace_mm: float = 0.15  # RMS of a smooth random displacement of the boundary
    displace_corr_mm: float = 2.0  # its correlation length
    rotate_deg: float = 2.0  # rotation about the centroid, uniform in [-rotate, +rotate]
    translate_mm: float = 0.2  # translation per axis, uniform in [-translate, +translate]
    seed: int = 0  # with a digest of the mask file: each case's own perturbations


@dataclass
class DataConfig:
    """Where the cohort comes from and how to read it."""

    source: DataSource = DataSource.synthetic  # synthetic | manifest | features
    manifest: Optional[str] = None  # CSV, one row per lesion; paths relative to it
    features_table: Optional[str] = None  # CSV/Parquet replacing images (source=features)
    case_column: str = "case_id"
    label_column: str = "label"  # binary outcome: 1 = positive_class, 0 = negative_class
    positive_class: str = "positive"  # what label 1 means, in every table, figure and report
    negative_class: str = "negative"  # what label 0 means (synthetic cohort: HER2-low/HER2-zero)
    spacing_mm: Optional[float] = None  # cohort-wide pixel spacing for PNG/JPEG/BMP/TIFF
    mask_label: Optional[int] = None  # label value to use in multi-label masks
    max_image_pixels: Optional[int] = 25_000_000  # larger images are refused from their header,
    # before any pixel is read (25 M = 5000 x 5000; analysing needs ~20 bytes/pixel); null = none
    clinical_columns: List[str] = field(default_factory=list)  # manifest columns used as clinical
    site_column: Optional[str] = None  # manifest column naming each case's device or site
    # (e.g. device): per-site tables, site splits (split.method=site | leave_one_site_out), ComBat
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
    fov: Fov = Fov.nonzero  # clip rings to: nonzero (image > 0) | none
    min_coverage: float = 0.8  # warn when a clipped ring keeps less of its full annulus
    signature_kinds: List[RegionKind] = field(
        default_factory=lambda: [RegionKind["tumour"], RegionKind["tumour+ring"]]
    )  # signatures per region kind: tumour | tumour+ring | ring | tumour+band | band
    ring_exclude_classes: List[str] = field(default_factory=lambda: ["shape2D"])  # feature classes
    # left out of rings and bands (their shape is the tumour's shape: counted twice otherwise)
    reader2: bool = False  # also extract from mask_reader2 (columns reader2__<name>) for ICC
    perturb: PerturbSpec = field(default_factory=PerturbSpec)  # contour perturbations, used when
    # selection.robustness_threshold is set (columns perturb<k>__<name>)
    overlays: int = 0  # write this many QA overlay PNGs (task=extract)
    annotation_check: bool = True  # flag burned-in calipers/text/colour marks inside the regions
    # (columns annotation_px/_fraction/_flagged of region_stats; a warning per flagged case)


@dataclass
class ExtractorConfig:
    """PyRadiomics settings: a params file used as is, or the inline three-key block."""

    name: str = "custom"
    params_file: Optional[str] = None  # a pyradiomics params YAML; overrides `params`
    params: Dict[str, Any] = field(default_factory=dict)  # setting / imageType / featureClass
    check_bins: bool = True  # warn when an image type keeps <= 2 grey-level bins in most regions


@dataclass
class SplitConfig:
    """Training/test split (the paper: block randomisation, block size 10, age-matched)."""

    method: SplitMethod = SplitMethod.block  # block | column (the manifest's own split column)
    test_size: float = 0.2584  # 54 of 209
    block_size: int = 10
    balance_on: Optional[str] = "age"  # order by this within class before blocking; null = none
    train_sites: Optional[List[str]] = None  # method=site: sites (data.site_column) to train on;
    # null = every site not in test_sites
    test_sites: Optional[List[str]] = None  # method=site: sites held out as the test set


@dataclass
class SelectionConfig:
    """Feature selection inside each fit: z-score, correlation, Mann-Whitney, LASSO-CV."""

    corr_threshold: float = 0.9  # drop one of each pair with |rho| above this
    corr_method: CorrMethod = CorrMethod.spearman  # spearman | pearson
    corr_rule: CorrRule = CorrRule.mean_abs_corr  # which of a pair goes (mean_abs_corr | later
    # | target)
    mw_alpha: float = 0.05  # keep features with Mann-Whitney p below this
    mw_correction: Optional[MWCorrection] = None  # null | fdr_bh | bonferroni
    lasso_cv: int = 10  # folds for choosing lambda
    lasso_rule: LassoRule = LassoRule.min  # min | 1se
    lasso_scoring: LassoScoring = LassoScoring.neg_log_loss  # neg_log_loss (deviance) | roc_auc
    lasso_n_lambdas: int = 20
    max_features: Optional[int] = None  # cap on LASSO-selected features
    icc_threshold: Optional[float] = None  # drop features with reader-1 vs reader-2 ICC below
    icc_kind: ICCKind = ICCKind.ICC2_1  # ICC2_1 absolute agreement | ICC3_1 consistency | ICC1_1
    robustness_threshold: Optional[float] = None  # drop features whose ICC across contour
    # perturbations (region.perturb) on the training rows of each fit is below this
    robustness_kind: ICCKind = ICCKind.ICC2_1  # ICC2_1 absolute agreement | ICC3_1 | ICC1_1
    harmonise: Optional[Harmonise] = None  # combat: ComBat across data.site_column as the first
    # pipeline step, fitted on the training rows of every fit (never on all cases)
    harmonise_covariates: List[str] = field(default_factory=list)  # clinical columns whose
    # effect ComBat protects (data.clinical_columns; never the label); [] = no covariates
    harmonise_discrete: List[str] = field(default_factory=list)  # which of them are categorical
    harmonise_unseen: UnseenSite = UnseenSite.reference  # a site absent from training: reference
    # (harmonised to the training data from its own cases' features, no labels) | error


@dataclass
class ClinicalConfig:
    """Clinical model: univariable screening, then multivariable logistic regression (the paper).

    ``stepwise`` reports odds ratios and p-values after data-driven selection (post-selection
    inference: optimistic, said in the report); ``prespecified`` fits every column with no
    selection; ``penalised`` is a ridge logistic on every column (C chosen by inner CV).
    """

    method: ClinicalMethod = ClinicalMethod.stepwise  # stepwise | prespecified | penalised
    columns: Optional[List[str]] = None  # null = data.clinical_columns
    univariable_p: float = 0.05
    multivariable_p: float = 0.05


@dataclass
class NomogramConfig:
    """Rad-score of one ring signature + the clinical factors in one logistic model."""

    signature: str = "auto"  # auto = best out-of-fold training AUC among ring signatures
    rad_score: RadScoreMode = RadScoreMode.cross_fitted  # in_sample = the paper (optimistic)
    vif_limit: float = 5.0  # warn above this variance inflation factor (paper: all < 1.2)


@dataclass
class ModelConfig:
    """The classifier on the selected radiomics features (one file per model in conf/model/)."""

    _target_: str = MISSING  # the estimator factory, her2study.models.<name>
    name: ModelName = MISSING  # logistic | lasso_logistic | ridge | svm | random_forest
    params: Dict[str, Any] = field(default_factory=dict)  # passed to the estimator
    clinical: ClinicalConfig = field(default_factory=ClinicalConfig)
    nomogram: NomogramConfig = field(default_factory=NomogramConfig)


@dataclass
class EvaluationConfig:
    """How predictions are judged."""

    threshold: ThresholdRule = ThresholdRule.youden  # youden (chosen on training) | fixed
    threshold_on: ThresholdData = ThresholdData.out_of_fold  # training predictions it is chosen on
    fixed_threshold: float = 0.5
    ci: AUCInterval = AUCInterval.delong  # delong | bootstrap
    n_boot: int = 2000
    hl_groups: int = 10
    dca_max_threshold: float = 0.99
    net_benefit_at: List[float] = field(default_factory=lambda: [0.3, 0.5, 0.7])
    cv_folds: int = 5  # training-set folds: out-of-fold predictions (thresholds, nomogram)
    cv_repeats: int = 1  # repeats of the training CV (fold AUCs for comparing margins; >= 5 for a
    # sweep answered on the training side, task=compare)
    bootstrap_reps: int = 20  # optimism-corrected validation (Harrell); 0 = off


@dataclass
class ExecutionConfig:
    """How work is spread over cores or a cluster."""

    n_jobs: int = 2  # parallel cases; -1 = all cores
    backend: Backend = Backend.loky  # joblib backend: loky | threading | dask | ray
    progress: bool = True  # show a progress bar on long work


@dataclass
class TrackingConfig:
    """MLflow tracking."""

    enabled: bool = True
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "${study}"
    log_model: bool = True


@dataclass
class ReportConfig:
    """What the reports show."""

    paper_reference: Optional[bool] = None  # the source paper's HER2 figures beside ours
    # (task=paper): null = on for the synthetic cohort only, true | false


@dataclass
class TaskConfig:
    """What runs (one file per task in conf/task/): ``_target_`` is its ``run(cfg)``."""

    _target_: str = MISSING  # her2study.tasks.<name>.run
    name: TaskName = MISSING


@dataclass
class CompareConfig:
    """``task=compare``: which sweep's runs to compare."""

    sweep_id: Optional[str] = None  # the tag sweep_id of the runs; null = the newest sweep
    allow_mixed: bool = False  # compare runs of different datasets (tag data_digest) anyway


@dataclass
class Her2StudyConfig:
    """The whole run. ``search`` and ``predict`` exist only in the tasks that use them."""

    task: TaskConfig = MISSING  # conf/task/<name>.yaml: synth | extract | paper | compare | ...
    study: str = "her2study"  # study name: MLflow experiment, Optuna study
    seed: int = 42
    cache_dir: str = ".her2study_cache"  # features cache and synthetic cohort
    data: DataConfig = field(default_factory=DataConfig)
    region: RegionConfig = field(default_factory=RegionConfig)
    extractor: ExtractorConfig = field(default_factory=ExtractorConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    model: ModelConfig = MISSING
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    search: Optional[SearchConfig] = None  # task=search / export (conf/search/)
    predict: Optional[PredictConfig] = None  # task=predict
    compare: Optional[CompareConfig] = None  # task=compare
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


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
    cs.store(group="task", name="task_schema", node=TaskConfig)
    cs.store(group="predict", name="predict_schema", node=PredictConfig)
