"""Argument types that refuse impossible values at the door, with one line.

``type=positive_int`` makes ``--chunk-rows 0`` or ``--chunk-rows -5`` an argparse error
(``cmapdask: error: argument --chunk-rows: must be a positive integer, not '0'``, exit 2)
instead of a silent default or a traceback later.
"""

from __future__ import annotations

import argparse
import json

__all__ = ["positive_int", "nonnegative_int", "json_object", "SO_HELP"]

SO_HELP = "fsspec options for the store URL"


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}") from None


def positive_int(text: str) -> int:
    """An integer of at least 1."""
    v = _int(text, "a positive integer")
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return v


def nonnegative_int(text: str) -> int:
    """An integer of at least 0."""
    v = _int(text, "an integer of 0 or more")
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be an integer of 0 or more, not {text!r}")
    return v


def json_object(text: str) -> dict:
    """A JSON object (``--storage-options '{"anon": true}'``): a list, a number or text
    that is not JSON is refused at the door."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"must be a JSON object such as '{{\"anon\": true}}', not {text!r}"
        )
    return value
