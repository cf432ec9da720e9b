"""Checks made before a nested search runs: the data digest that keys its studies, and the
search settings that cannot give a valid estimate."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import OmegaConf

from her2study.errors import ConfigError
from her2study.search.candidate import (
    Design,
    _plain,
)

# keys of the ``extractor`` group that change no feature value (a resumed study stays valid)
NOT_EXTRACTION_SETTINGS = ("check_bins",)


def data_digest(design: Design, cfg=None) -> str:
    """Identifies what a study's trials scored: case ids, labels, every column's name and values
    (features + clinical), and -- when the features were extracted -- the extractor settings
    (``extractor``, and the content of ``extractor.params_file``)."""
    h = hashlib.sha256(design.digest(list(design.X.columns)).encode())
    if design.sites is not None:  # ComBat's batches and the outer folds by site
        h.update(json.dumps([str(v) for v in design.sites]).encode())
    if cfg is not None and str(OmegaConf.select(cfg, "data.source", default="")) != "features":
        ext = _plain(OmegaConf.select(cfg, "extractor", default=None))
        params_file = ext.get("params_file") if isinstance(ext, dict) else None
        if isinstance(ext, dict):  # switches of checks, not of the extraction
            ext = {k: v for k, v in ext.items() if k not in NOT_EXTRACTION_SETTINGS}
            if params_file:  # its content counts (below), not where it lies
                ext["params_file"] = "<content>"
        h.update(json.dumps(ext, sort_keys=True, default=str).encode())
        if params_file and Path(params_file).is_file():
            h.update(Path(params_file).read_bytes())
    return h.hexdigest()[:16]


def check_search_config(cfg) -> list[str]:
    """Refuse what the search does not do; the warnings of a search that will not search as
    meant (TPE never modelling). Called before any extraction."""
    s = cfg.search
    icc = OmegaConf.select(cfg, "selection.icc_threshold", default=None)
    if icc is not None:
        raise ConfigError(
            f"selection.icc_threshold={icc} is not supported by task=search: the search does not "
            "apply the inter-reader ICC filter inside its outer training folds (nor does "
            "task=export to the model it exports). Set selection.icc_threshold=null for the "
            "search (reliability analysis: +exp=paper with selection.icc_threshold)"
        )
    perms = int(OmegaConf.select(cfg, "search.permutations", default=0) or 0)
    if perms < 0:
        raise ConfigError(f"search.permutations={perms}: use 0 (off) or a number of permutations")
    out = []
    if str(s.sampler) == "tpe":
        budgets = [("search.n_trials", int(s.n_trials))]
        if perms:
            budgets.append(("search.permutation_trials", _permutation_trials(cfg)))
        for key, n in budgets:
            if n <= int(s.n_startup_trials):
                out.append(
                    f"{key}={n} <= search.n_startup_trials={s.n_startup_trials}: every trial is "
                    "one of TPE's random start-up trials, so TPE never models the results (a "
                    "random search); raise the trials or lower search.n_startup_trials"
                )
    return out


def _permutation_trials(cfg) -> int:
    n = OmegaConf.select(cfg, "search.permutation_trials", default=None)
    n = int(cfg.search.n_trials if n is None else n)
    if n < 1:
        raise ConfigError(f"search.permutation_trials={n}: use >= 1 or null (= search.n_trials)")
    return n
