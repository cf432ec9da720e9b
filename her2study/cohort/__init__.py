"""Cohort input: manifest reading and validation, image IO, the synthetic cohort."""

from her2study.cohort.io import ImageReadError, read_image, read_mask
from her2study.cohort.manifest import Case, Cohort, CohortError, Problem, load_cohort

__all__ = [
    "Case",
    "Cohort",
    "CohortError",
    "ImageReadError",
    "Problem",
    "load_cohort",
    "read_image",
    "read_mask",
]
