"""The search space: ``search.space`` checked and parsed into dimensions, sampled per trial.

Every problem with a spec raises :class:`~her2study.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from her2study.errors import ConfigError
from her2study.models import MODELS, estimator_params
from her2study.search.candidate import REGION_KINDS, SELECTION_DIMS, _plain, parse_band

STUDY_DIMS = ("region_kind", "ring_width_mm", "band_mm", "use_clinical", "model")
SPEC_KEYS = {"type", "choices", "low", "high", "log", "step", "when"}


# ------------------------------------------------------------------------------------------
# The space
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dim:
    """One dimension of the search space."""

    name: str  # ring_width_mm, corr_threshold, model, svm.C, ...
    kind: str  # categorical | float | int | fixed
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    value: Any = None  # kind == fixed
    when: tuple = ()  # ((dimension, (allowed values...)), ...)

    def distribution(self):
        import optuna.distributions as d

        if self.kind == "categorical":
            return d.CategoricalDistribution(list(self.choices))
        if self.kind == "float":
            return d.FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return d.IntDistribution(
                int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        return None


def _flatten_space(space: dict, prefix: str = "") -> dict[str, Any]:
    """Nested model namespaces (``svm: {C: {...}}``) become dotted names (``svm.C``)."""
    out: dict[str, Any] = {}
    for key, spec in space.items():
        name = f"{prefix}{key}"
        if spec is None:  # removed (Hydra merges overrides into the default space)
            continue
        is_namespace = (
            isinstance(spec, dict) and "type" not in spec and not prefix and key in MODELS
        )
        if is_namespace:
            out.update(_flatten_space(spec, f"{name}."))
        else:
            out[name] = spec
    return out


def _is_scalar(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def parse_space(space, defaults: dict | None = None) -> list[Dim]:
    """Check ``search.space`` and return its dimensions, conditions before the dimensions they
    govern. Every problem raises :class:`ConfigError` naming the key.

    ``defaults`` gives the value of a non-searched dimension named in a ``when`` (e.g. ``model``
    from ``model.name``), so a condition that can never hold is reported.
    """
    space = _plain(space) or {}
    if not isinstance(space, dict):
        raise ConfigError(f"search.space must be a mapping of dimension -> spec, got {space!r}")
    defaults = dict(defaults or {})
    flat = _flatten_space(space)
    dims: dict[str, Dim] = {}
    for name, spec in flat.items():
        dims[name] = _parse_dim(name, spec)
    # conditions refer to categorical (or fixed) dimensions, or to the config's fixed values
    for dim in dims.values():
        for cond, allowed in dim.when:
            key = f"search.space.{dim.name}.when.{cond}"
            if cond == dim.name:
                raise ConfigError(f"{key}: a dimension cannot depend on itself")
            if cond in dims:
                other = dims[cond]
                values = other.choices if other.kind == "categorical" else (other.value,)
                if other.kind in ("float", "int"):
                    raise ConfigError(
                        f"{key}: conditions need a categorical dimension, '{cond}' is {other.kind}"
                    )
                if not set(allowed) & set(values):
                    raise ConfigError(
                        f"{key}: {list(allowed)} never occurs; '{cond}' takes {list(values)}"
                    )
            elif cond in defaults:
                if defaults[cond] not in allowed:
                    raise ConfigError(
                        f"search.space.{dim.name} applies only when {cond} is in {list(allowed)},"
                        f" but {cond} is not searched and is {defaults[cond]!r}: add '{cond}' to"
                        f" search.space or remove {dim.name}"
                    )
            else:
                raise ConfigError(
                    f"{key}: '{cond}' is not a dimension of search.space "
                    f"(dimensions: {sorted(dims)})"
                )
    # order: a dimension after every dimension its conditions name
    ordered: list[Dim] = []
    placed: set[str] = set()
    pending = list(dims.values())
    while pending:
        progressed = False
        for dim in list(pending):
            if all(c not in dims or c in placed for c, _ in dim.when):
                ordered.append(dim)
                placed.add(dim.name)
                pending.remove(dim)
                progressed = True
        if not progressed:
            raise ConfigError(
                f"search.space: circular 'when' conditions between {[d.name for d in pending]}"
            )
    return ordered


def _parse_dim(name: str, spec) -> Dim:
    key = f"search.space.{name}"
    model = name.split(".", 1)[0] if "." in name else None
    if model is not None:
        if model not in MODELS:
            raise ConfigError(f"{key}: '{model}' is not a model (models: {', '.join(MODELS)})")
        param = name.split(".", 1)[1]
        valid = estimator_params(model)
        if param not in valid:
            raise ConfigError(
                f"{key}: '{param}' is not a parameter of the {model} estimator "
                f"(parameters: {', '.join(sorted(valid))})"
            )
    elif name not in SELECTION_DIMS + STUDY_DIMS:
        raise ConfigError(
            f"{key}: unknown dimension '{name}'. Dimensions: {', '.join(STUDY_DIMS)}, "
            f"{', '.join(SELECTION_DIMS)}, or <model>.<parameter> with a model of "
            f"{', '.join(MODELS)}"
        )
    when: dict = {}
    if isinstance(spec, dict):
        unknown = set(spec) - SPEC_KEYS
        if unknown:
            raise ConfigError(
                f"{key}: unknown spec key(s) {sorted(unknown)}; a spec has {sorted(SPEC_KEYS)}"
            )
        when = spec.get("when") or {}
        if not isinstance(when, dict):
            raise ConfigError(f"{key}.when must map a dimension to a value or a list of values")
    conds = {c: tuple(v) if isinstance(v, (list, tuple)) else (v,) for c, v in when.items()}
    if model is not None:
        conds.setdefault("model", (model,))
        if conds["model"] != (model,):
            raise ConfigError(f"{key}: a parameter of {model} is searched only when model={model}")
    when_t = tuple(sorted(conds.items()))

    if not isinstance(spec, dict):
        if not _is_scalar(spec):
            raise ConfigError(
                f"{key}: a fixed value must be a number, string, bool or null, "
                f"got {spec!r}; or give a spec {{type: ...}}"
            )
        dim = Dim(name, "fixed", value=spec, when=when_t)
        _check_values(dim, (spec,))
        return dim
    kind = spec.get("type")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, (list, tuple)) or not choices:
            raise ConfigError(f"{key}.choices must be a non-empty list")
        if not all(_is_scalar(c) for c in choices):
            raise ConfigError(f"{key}.choices must hold numbers, strings, bools or null")
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"{key}.choices has duplicates: {list(choices)}")
        extra = set(spec) - {"type", "choices", "when"}
        if extra:
            raise ConfigError(f"{key}: {sorted(extra)} do not apply to a categorical dimension")
        dim = Dim(name, "categorical", choices=tuple(choices), when=when_t)
        _check_values(dim, choices)
        return dim
    if kind in ("float", "int"):
        for bound in ("low", "high"):
            v = spec.get(bound)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{key}.{bound} must be a number, got {v!r}")
        low, high = spec["low"], spec["high"]
        if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
            raise ConfigError(f"{key}: an int dimension needs integer low/high")
        if not low < high:
            raise ConfigError(f"{key}: low ({low}) must be below high ({high})")
        log_ = bool(spec.get("log", False))
        step = spec.get("step")
        if log_ and low <= 0:
            raise ConfigError(f"{key}: log: true needs low > 0")
        if step is not None:
            if isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0:
                raise ConfigError(f"{key}.step must be a positive number")
            if log_ and kind == "float":
                raise ConfigError(f"{key}: step and log cannot be combined for a float")
        if "choices" in spec:
            raise ConfigError(f"{key}: choices apply to type: categorical only")
        dim = Dim(
            name,
            kind,
            low=low,
            high=high,
            log=log_,
            step=float(step) if step is not None else None,
            when=when_t,
        )
        _check_values(dim, (low, high))
        return dim
    raise ConfigError(f"{key}.type must be categorical, float or int, got {kind!r}")


def _check_values(dim: Dim, values) -> None:
    """Checks of the values a known dimension may take."""
    key = f"search.space.{dim.name}"
    name = dim.name
    bad = None
    if name == "ring_width_mm":
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0]
        why = "ring widths are numbers >= 0 mm (0 = tumour only)"
    elif name == "region_kind":
        bad = [v for v in values if v not in REGION_KINDS]
        why = f"region kinds are {', '.join(REGION_KINDS)}"
    elif name == "band_mm":
        bad = []
        for v in values:
            try:
                if not isinstance(v, str):
                    raise ConfigError(v)
                parse_band(v)
            except ConfigError:
                bad.append(v)
        why = "bands are strings 'inner-outer' in mm, e.g. '1.5-2.5' (0 <= inner < outer)"
    elif name == "use_clinical":
        bad = [v for v in values if not isinstance(v, bool)]
        why = "use_clinical takes true/false"
    elif name == "model":
        bad = [v for v in values if v not in MODELS]
        why = f"models are {', '.join(MODELS)}"
    elif name == "corr_threshold":
        bad = [v for v in values if not isinstance(v, (int, float)) or not 0 < v <= 1]
        why = "thresholds are in (0, 1]"
    elif name == "mw_alpha":
        bad = [v for v in values if not isinstance(v, (int, float)) or not 0 < v <= 1]
        why = "alpha is in (0, 1]"
    elif name == "lasso_rule":
        bad = [v for v in values if v not in ("min", "1se")]
        why = "rules are min and 1se"
    elif name == "mw_correction":
        bad = [v for v in values if v not in (None, "fdr_bh", "bonferroni")]
        why = "corrections are null, fdr_bh and bonferroni"
    elif name == "corr_method":
        bad = [v for v in values if v not in ("spearman", "pearson")]
        why = "methods are spearman and pearson"
    if bad:
        raise ConfigError(f"{key}: {bad} not allowed: {why}")


def resolve(dims: list[Dim], sampled: dict, defaults: dict) -> dict:
    """The full assignment of a trial: sampled values, fixed values, only active dimensions."""
    out: dict = {}
    for dim in dims:
        if not _active(dim, out, defaults):
            continue
        out[dim.name] = dim.value if dim.kind == "fixed" else _tidy(dim, sampled[dim.name])
    return out


def _tidy(dim: Dim, value):
    """Stepped floats without binary noise (0.8500000000000001 -> 0.85)."""
    if dim.kind == "float" and dim.step is not None:
        return round(float(value), 10)
    return value


def _active(dim: Dim, current: dict, defaults: dict) -> bool:
    for cond, allowed in dim.when:
        value = current[cond] if cond in current else defaults.get(cond)
        if value not in allowed:
            return False
    return True


def suggest(trial, dims: list[Dim], defaults: dict) -> dict:
    """Sample a trial's values (conditional dimensions only when their conditions hold)."""
    out: dict = {}
    for dim in dims:
        if not _active(dim, out, defaults):
            continue
        if dim.kind == "fixed":
            out[dim.name] = dim.value
        elif dim.kind == "categorical":
            out[dim.name] = trial.suggest_categorical(dim.name, list(dim.choices))
        elif dim.kind == "float":
            out[dim.name] = _tidy(
                dim, trial.suggest_float(dim.name, dim.low, dim.high, log=dim.log, step=dim.step)
            )
        else:
            out[dim.name] = trial.suggest_int(
                dim.name, int(dim.low), int(dim.high), log=dim.log, step=int(dim.step or 1)
            )
    return out


def space_digest(dims: list[Dim]) -> str:
    return hashlib.sha256(
        json.dumps([asdict(d) for d in dims], default=str, sort_keys=True).encode()
    ).hexdigest()[:16]
