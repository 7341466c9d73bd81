"""JSON that every reader takes. Python's ``json`` writes NaN and infinities as bare ``NaN`` /
``Infinity``, which JSON does not have (``jq`` and JavaScript's ``JSON.parse`` refuse the line): a
score that could not be computed is written as ``null`` instead."""

from __future__ import annotations

import json
import math


def finite(value):
    """``value`` with every non-finite float inside (dicts, lists, tuples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(value, **kwargs) -> str:
    """``json.dumps`` of ``value`` with non-finite floats as null."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)
