"""Privacy guard for case IDs: which look like patient names or MRNs, and salted pseudonyms.

Case IDs logged anywhere (tables, tags, figures) are the manifest's own IDs.
:func:`looks_identifying` flags IDs that look like patient names or DICOM PatientIDs / MRNs,
and :func:`pseudonymise` is the offered remedy (salted SHA-256 codes) before a study is shared.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

__all__ = ["looks_identifying", "pseudonymise", "salt_override", "salt_problem"]

SALT_ENV = "HER2STUDY_SALT"
SALT_KEY = "data.pseudonym_salt"
SALT_FIX = (
    f"a salt given as {SALT_KEY}=... is written in plain text to the run's .hydra/*.yaml and the "
    f"shell history: drop that override and export {SALT_ENV}=... instead"
)

_MRN = re.compile(r"^[A-Za-z]{0,4}[-_ ]?\d{6,}$")
# 5 digits: bare ("12345", not a zero-padded "00017") or after a record prefix ("MRN 12345");
# a one-letter code such as "B12345" passes
_MRN5 = re.compile(r"^(?:[1-9]\d{4}|(?:MRN|PID|PAT|PN|ID|NHS|KVNR)[-_ #:]?\d{5})$", re.I)
_PSEUDONYM = re.compile(r"^anon-[0-9a-f]{12}$")  # pseudonymise()'s own codes, even all-letter
_SSN = re.compile(r"^\d{3}-\d{2}-\d{4}$")
_DATE = re.compile(  # a calendar date with separators: 1970-01-01, 1970.01.01, 01.01.1970
    r"(?<!\d)(?:(?:19|20)\d\d([-./])(?:0?[1-9]|1[0-2])\1(?:0?[1-9]|[12]\d|3[01])"
    r"|(?:0?[1-9]|[12]\d|3[01])([-./])(?:0?[1-9]|1[0-2])\2(?:19|20)\d\d)(?!\d)"
)
_L = r"[^\W\d_]"  # a letter, any script ("ü", "ø", "é")
_NAME_WORD = re.compile(rf"^{_L}{_L}*(?:['’]{_L}+)?$")  # "Jane", "DOE", "O'Brien", "Müller"
_TITLE_WORD = re.compile(r"^[A-Z][a-z'’]+(?:[A-Z][a-z]+)?$")  # "Jane", "McDonald"; not "SYN"
_WORD = re.compile(rf"^{_L}{{2,}}(?:['’]{_L}+)?$")  # letters only, 2+: "doe", "JANE", "anna"


def _capitalised(word: str) -> bool:
    return len(word) >= 2 and word[0].isupper() and bool(_NAME_WORD.match(word))


def _looks_identifying(case_id: str) -> bool:
    s = str(case_id).strip()
    if not s or _PSEUDONYM.match(s):
        return False
    if _MRN.match(s) or _MRN5.match(s) or _SSN.match(s):  # PatientID / MRN / national number
        return True
    if _DATE.search(s):  # a birth (or scan) date: "Smith_1970-01-01", "01.02.1970"
        return True
    if "^" in s:  # DICOM PN: Family^Given^Middle^Prefix^Suffix
        return any(part.isalpha() for part in re.split(r"[\^\s]+", s))
    # "Jane Doe", "DOE, JANE", "Jane Doe 2", "Müller Anna": two+ capitalised words
    words = [w for w in re.split(r"[\s,]+", s) if w]
    if len(words) >= 2 and sum(_capitalised(w) for w in words) >= 2:
        return True
    # "Jane_Doe", "Jane-Doe", "Jane.Doe": Title-case words (all-caps codes like "HER2_POS" pass)
    words = [w for w in re.split(r"[_.\-]+", s) if w]
    if len(words) >= 2 and sum(bool(_TITLE_WORD.match(w)) for w in words) >= 2:
        return True
    # "DOE_JANE", "doe.jane", "jane doe", "müller-anna": only words of 2+ letters, no digits
    # (codes carry a number: "case_17", "HER2_POS_03", "lesion-7")
    words = [w for w in re.split(r"[\s,_.\-]+", s) if w]
    return len(words) >= 2 and all(_WORD.match(w) for w in words)


def looks_identifying(ids: Iterable[Any]) -> list[str]:
    """Case IDs that look like patient names or DICOM PatientIDs / MRNs.

    Case IDs are the cohort manifest's own: her2study logs them (per-case tables, figures) as
    given. Flagged are: DICOM person names (``Doe^Jane``), two or more capitalised words in any
    script (``Jane Doe``, ``DOE, JANE``, ``Jane_Doe``, ``Müller Anna``), two or more words made of
    letters only in any case (``DOE_JANE``, ``doe.jane``, ``jane doe``), calendar dates
    (``Smith_1970-01-01``), long digit strings (6+ digits, optionally after a short letter
    prefix: ``12345678``, ``MRN1234567``; 5 digits bare or after a record prefix: ``12345``,
    ``MRN12345``) and SSN-like numbers. Coded IDs such as ``SYN0001``, ``C001``, ``P0123``,
    ``case_12``, ``HER2-045``, ``B12345`` pass (a code carries a number). The remedy is
    :func:`pseudonymise` (keep the key table off the tracking server). A heuristic: it cannot
    prove an ID is anonymous.
    """
    return [str(i) for i in ids if _looks_identifying(str(i))]


def pseudonymise(ids: Iterable[Any], salt: str) -> dict[str, str]:
    """Map case IDs to ``anon-<12 hex>`` codes: the first 12 hex characters of
    SHA-256(``salt + "\\0" + id``).

    The same salt gives the same codes (re-runs stay joinable); keep the salt secret, since
    without one an MRN's hash can be found by trying every number.
    """
    if not isinstance(salt, str) or not salt:
        raise ValueError("pseudonymise needs a non-empty secret salt")
    out: dict[str, str] = {}
    codes: dict[str, str] = {}
    for i in ids:
        key = str(i)
        code = "anon-" + hashlib.sha256(f"{salt}\0{key}".encode()).hexdigest()[:12]
        if codes.get(code, key) != key:  # pragma: no cover - 48-bit collision
            raise ValueError(f"pseudonym collision for {key!r}; use another salt")
        codes[code] = key
        out[key] = code
    return out


def salt_override(overrides) -> bool:
    """Whether Hydra overrides (``key=value`` strings) set the salt to a value (``null``: no)."""
    for arg in overrides or ():
        key, sep, value = str(arg).partition("=")
        if sep and key.lstrip("+~").strip() == SALT_KEY and value.strip() not in ("", "null"):
            return True
    return False


def salt_problem(salt, overrides=()) -> str | None:
    """Why the configured salt cannot be used, or None: it must come from ``HER2STUDY_SALT``.

    A salt on the command line (``overrides``) or in a config file is a secret in plain text.
    The message never contains the salt.
    """
    import os

    if salt_override(overrides):
        return f"refusing {SALT_KEY} on the command line: {SALT_FIX}"
    if salt is not None and str(salt) != os.environ.get(SALT_ENV):
        return (
            f"{SALT_KEY} is set in a config file or an override, not from the environment: a "
            f"secret salt must not be stored in plain text; remove it there and export "
            f"{SALT_ENV}=... instead"
        )
    return None
