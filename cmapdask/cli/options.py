"""Argument types that refuse impossible values at the door, with one line.

``type=positive_int`` makes ``--chunk-rows 0`` or ``--chunk-rows -5`` an argparse error
(``cmapdask: error: argument --chunk-rows: must be a positive integer, not '0'``, exit 2)
instead of a silent default or a traceback later.
"""

from __future__ import annotations

import argparse
import json

__all__ = [
    "positive_int",
    "nonnegative_int",
    "json_object",
    "scheduler_text",
    "choice_list",
    "zero_one_list",
    "quantity_list",
    "SO_HELP",
]

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


def scheduler_text(text: str) -> str:
    """``--scheduler``: an empty value is a mistake, never "use the default"."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty value; give local, none, an address or a file")
    return text


def _items(text: str) -> list[str]:
    items = [s.strip() for s in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"an empty value in {text!r}")
    return items


def choice_list(*choices: str):
    """Comma-separated values, each one of ``choices`` (any case)."""

    def parse(text: str) -> str:
        bad = [x for x in _items(text) if x.lower() not in choices]
        if bad:
            raise argparse.ArgumentTypeError(
                f"{bad[0]!r} is not one of {', '.join(map(repr, choices))}"
            )
        return text

    return parse


def zero_one_list(text: str) -> str:
    """Comma-separated flags: 1 (yes) or 0 (no)."""
    bad = [x for x in _items(text) if x not in ("0", "1")]
    if bad:
        raise argparse.ArgumentTypeError(f"must be 1 or 0, not {bad[0]!r}")
    return text


def quantity_list(text: str) -> str:
    """Comma-separated quantities such as ``10 uM`` or ``24 h`` (a number, then a unit)."""
    from cmapdask.data.filters import _QTY  # the one spelling rule of doses and times

    bad = [x for x in _items(text) if not _QTY.match(x)]
    if bad:
        raise argparse.ArgumentTypeError(f"not a quantity such as '10 uM' or '24 h': {bad[0]!r}")
    return text
