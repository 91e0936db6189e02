"""What a missing metadata value is, in one place.

DEVELOPERS.md's data model: ``None`` and NaN (any float NaN, ``pandas.NA``, ``NaT``) are
missing, and so is CMap's ``-666`` as it arrives on input (the number ``-666`` or
``-666.0``, or the text ``"-666"``, ``"-666.0"``, ``"-666.000000"``), and the empty text
the store writes for a missing string.
"""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd

__all__ = ["MISSING", "MISSING_TEXT", "is_missing", "labels"]

MISSING = -666
MISSING_TEXT = frozenset({"-666", "-666.0", "-666.00", "-666.000", "-666.000000", ""})


def is_missing(value) -> bool:
    """True for a missing metadata value (``None``, NaN, ``-666``, ``"-666"``, ``""``).

    Examples
    --------
    >>> [is_missing(v) for v in (None, float("nan"), -666, " -666 ", "", "BRD-K1", 0)]
    [True, True, True, True, True, False, False]
    """
    if value is None:
        return True
    if isinstance(value, (str, bytes)):
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        return text.strip() in MISSING_TEXT
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        if isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real):
            return False
        v = float(value)
        return v != v or v == MISSING
    try:
        return bool(pd.isna(value))  # pandas.NA, NaT
    except (TypeError, ValueError):  # arrays and other containers are values, not missing
        return False


def labels(values) -> np.ndarray:
    """An object array of ``str`` labels with ``None`` for missing (see :func:`is_missing`).

    Examples
    --------
    >>> labels(["a", None, float("nan"), "-666", 3]).tolist()
    ['a', None, None, None, '3']
    """
    return np.array(
        [None if is_missing(v) else str(v) for v in np.asarray(values, dtype=object).tolist()],
        dtype=object,
    )
