"""Nested cross-validated search: which ring width, selection thresholds and model?

The paper chose its margins and thresholds once, on one split. Here the choice itself is
cross-validated:

* **Outer loop** -- repeated stratified K-fold (``search.outer_folds`` x ``search.outer_repeats``,
  ``search.seed``), or by site (``split.method=leave_one_site_out``: each site of
  ``data.site_column`` one outer fold; ``split.method=site``: one fold; :mod:`.outer`). Each
  outer test fold is used once, to score the configuration chosen on the other folds; the
  search never sees it.
* **Inner loop** -- inside each outer training fold an Optuna study (TPE by default, seeded)
  maximises the mean inner stratified K-fold AUC (``search.inner_folds``) over the space
  (``search.space``); its best trial is refitted on the whole outer training fold and scored on
  the outer test fold.
* **Estimate** -- mean outer AUC with the Nadeau-Bengio corrected resampled t interval
  (:mod:`~her2study.evaluation.resampling`; the outer folds share training cases, so a plain
  t-interval across them is too narrow), and the AUC of the pooled out-of-fold predictions
  (averaged over repeats; its DeLong CI treats the K fold models as one: descriptive), its
  calibration (slope, intercept, Hosmer-Lemeshow) and decision curve; how often each ring width
  and model won; how often each feature was selected.
* **Per ring width** -- in each outer fold the best trial of each width of the space (by inner
  AUC) is refitted and scored once on the outer test fold: a nested AUC per width with the same
  interval (``region_estimates.csv``: ``region, width_mm, nested_auc, ci_low, ci_high``; regions
  ``intra`` = tumour only, ``intra+ring<w>mm``, ``all``), and each width minus tumour only,
  paired on the same folds (``region_differences.csv``).
* **Permutation test** (``search.permutations`` = P > 0) -- the whole nested search rerun on P
  label permutations (studies ``<study>/perm<k>/outer<r>_<k>``, ``search.permutation_trials``
  trials each): ``permutation_p = (1 + #{permuted mean outer AUC >= observed}) / (1 + P)``.
* **Final configuration** -- one more study on all cases gives the configuration to export
  (``task=export``). Its performance estimate is the nested one, not its own (optimistic) CV
  score.

Dimensions of ``search.space`` (any subset; absent ones keep the run's config):

=====================  ==========================================================================
``ring_width_mm``      tumour + the ring of this width (its features must be extracted:
                       ``region.ring_widths_mm``); ``0`` = tumour only. Absent: every region of
                       the features table.
``region_kind``        ``tumour``, ``tumour+ring`` (absent: this, as above), ``ring`` (the ring
                       alone), ``tumour+band``, ``band`` (the band alone), as
                       ``region.signature_kinds``; per-region estimates are named as in
                       ``margins.csv`` (``ring2.5mm``, ``band1.5-2.5mm``, ...). Ring and band
                       regions leave out ``region.ring_exclude_classes`` (shape2D)
``band_mm``            the band of the band kinds, ``'inner-outer'`` in mm (``'1.5-2.5'``; its
                       features: ``region.bands_mm``); absent: the one band of ``region.bands_mm``
``use_clinical``       ``true``: the clinical columns join the design and go through the same
                       selection (absent: ``search.use_clinical``)
``corr_threshold``,    ``selection.*`` keys of the same name: ``corr_method``, ``corr_rule``,
``mw_alpha``, ...      ``mw_alpha``, ``mw_correction``, ``lasso_rule``, ``lasso_scoring``,
                       ``lasso_n_lambdas``, ``lasso_cv``, ``max_features``
``model``              ``logistic``, ``lasso_logistic``, ``ridge``, ``svm``, ``random_forest``
``<model>.<param>``    a parameter of that model's estimator (of the inner ``SVC`` for ``svm``),
                       searched only in trials where ``model`` is ``<model>``; written nested
                       (``svm: {C: {...}}``) or dotted (``svm.C: {...}``)
=====================  ==========================================================================

A spec is ``{type: categorical, choices: [...]}``, ``{type: float, low, high, log?, step?}``,
``{type: int, low, high, log?, step?}`` or a plain value (fixed, not searched); any spec may add
``when: {dimension: value or [values]}`` to be searched only in trials where those hold. ``null``
removes a dimension: Hydra merges command-line overrides into the default space, so
``search.space.use_clinical=null`` drops it, and ``search.space.model.choices=[logistic,svm]``
narrows one (a whole other space is best a file ``conf/search/<name>.yaml``, ``search=<name>``).

Speed: the inner folds are the same for every trial of a study, so each fitted prefix of the
pipeline (z-scoring + correlation filter, + Mann-Whitney, + LASSO, + model) is memoised by
(fold, columns, the parameters of the steps so far) and reused by every later trial that shares
it (``search.reuse``); discrete thresholds (``step``, or categorical) make such reuse frequent.
Trials can run in threads (``search.n_jobs``), and several processes can share a study.
``search.pruner`` (``none`` by default; ``median``, ``successive_halving``) stops a trial between
inner folds: after fold ``i`` the mean AUC of folds ``0..i`` is the trial's intermediate value at
step ``i``; PRUNED trials count toward ``search.n_trials``
(``experiments/benchmarks/README_pruning.md``: why it is off by default).

Storage (``search.storage``): ``null`` = ``sqlite:///<search.output_root>/optuna_<study>.db``
relative to the current folder (not Hydra's per-run folder, so a rerun resumes); any SQLAlchemy
URL (``sqlite:////abs/path.db``, ``postgresql+psycopg2://user:pw@host/db`` for a cluster); or
``journal:///relative/file.log`` / ``journal:////absolute/file.log`` (Optuna's JournalStorage on
a file: several workers on one machine or on NFS without a database server). Studies are named
``<study>/outer<r>_<k>`` and ``<study>/final``; trials already COMPLETE count toward
``search.n_trials``, so a killed search resumes where it stopped and two processes with the same
storage and study share the work. A study records the digest of the data it scored (case ids,
labels, every column's name and values, the extractor settings): a study found with another
digest is refused (:class:`~her2study.errors.ConfigError`), not mixed. Each study's sampler is
seeded from ``search.seed``, its name and that digest. ``reader2__*`` columns (the second
reader's features) are never predictors; ``selection.icc_threshold`` is refused by the search.

Modules, each importing only those before it: :mod:`~her2study.search.candidate` (a point of
the space as a pipeline on the design's columns), :mod:`~her2study.search.space` (the space and
its checks), :mod:`~her2study.search.memo` (inner CV with memoised pipeline prefixes),
:mod:`~her2study.search.storage` (Optuna storage, sampler, studies),
:mod:`~her2study.evaluation.resampling` (intervals, permutation p), and
:mod:`~her2study.search.nested` (the nested search and its estimate). Their names are
re-exported here.
"""

from __future__ import annotations

from her2study.evaluation.resampling import (
    NADEAU_BENGIO,
    corrected_t_interval,
    naive_t_interval,
    permutation_p,
)
from her2study.search.candidate import (
    SELECTION_DIMS,
    Candidate,
    Design,
    base_config,
    base_selection,
    build_pipeline,
    candidate_from_config,
    candidate_from_params,
    search_defaults,
)
from her2study.search.candidate import _plain as _plain  # OmegaConf node -> plain container
from her2study.search.memo import InnerCV
from her2study.search.nested import (
    KINDS,
    REGION_COLUMNS,
    NestedResult,
    check_search_config,
    data_digest,
    load_final,
    nested_search,
    permuted_design,
    region_differences,
    region_estimates,
    region_name,
    selected_features,
    summarise,
)
from her2study.search.space import (
    SPEC_KEYS,
    STUDY_DIMS,
    Dim,
    parse_space,
    resolve,
    space_digest,
    suggest,
)
from her2study.search.storage import (
    FIT_ERRORS,
    PRUNERS,
    SAMPLERS,
    WORKER,
    PerTrialSeedSampler,
    TrialFitFailed,
    best_params,
    counted_states,
    make_objective,
    make_pruner,
    n_complete,
    open_storage,
    open_study,
    quiet_optuna,
    run_study,
    storage_url,
    study_seed,
)

__all__ = [
    "KINDS",
    "NADEAU_BENGIO",
    "REGION_COLUMNS",
    "Candidate",
    "Design",
    "Dim",
    "FIT_ERRORS",
    "InnerCV",
    "NestedResult",
    "PerTrialSeedSampler",
    "PRUNERS",
    "SAMPLERS",
    "SELECTION_DIMS",
    "SPEC_KEYS",
    "STUDY_DIMS",
    "TrialFitFailed",
    "WORKER",
    "base_config",
    "base_selection",
    "best_params",
    "build_pipeline",
    "candidate_from_config",
    "candidate_from_params",
    "check_search_config",
    "corrected_t_interval",
    "counted_states",
    "data_digest",
    "load_final",
    "make_objective",
    "make_pruner",
    "n_complete",
    "naive_t_interval",
    "nested_search",
    "open_storage",
    "open_study",
    "parse_space",
    "permutation_p",
    "permuted_design",
    "quiet_optuna",
    "region_differences",
    "region_estimates",
    "region_name",
    "resolve",
    "run_study",
    "search_defaults",
    "selected_features",
    "space_digest",
    "storage_url",
    "study_seed",
    "suggest",
    "summarise",
]
