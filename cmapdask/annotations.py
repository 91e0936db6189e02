"""Mechanism-of-action annotations: which perturbagens share a MoA (or a target, or a PCL).

Annotations are held as *sets*: ``{set name: [perturbagen ids]}`` (a MoA, a target or a
PCL names a set of ``pert_id``), the shape a GMT file already has. They come from

- ``compoundinfo`` (the release table: ``pert_id``, ``cmap_name``, ``moa``, ``target``;
  one row per compound and target, values multi-valued with ``|``);
- a Drug Repurposing Hub TSV (``!``-comment header lines, ``pert_iname`` or
  ``broad_id`` ids, ``moa`` and ``target`` multi-valued with ``|``);
- a GMT file (a PCL file: set name, description, member ids).

:func:`membership` turns sets into an item x set incidence for any list of items whose
labels (for example each signature's ``pert_id``) are set members.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd

from cmapdask.errors import InputError, MetadataError
from cmapdask.model.missing import is_missing

__all__ = [
    "read_annotations",
    "sets_from_table",
    "labels_from_sets",
    "membership",
    "shuffle_sets",
    "write_annotation_table",
]

Format = Literal["auto", "compoundinfo", "repurposing", "gmt"]
Field = Literal["moa", "target"]

_ID_COLUMNS = ("pert_id", "broad_id", "pert_iname", "cmap_name")
_MISSING = {"", "-666", "nan", "NaN", "NA", "None", "null"}


def _split(value) -> list[str]:
    if is_missing(value):
        return []
    return [p.strip() for p in str(value).split("|") if p.strip() not in _MISSING]


def sets_from_table(
    table: pd.DataFrame,
    *,
    field: Field = "moa",
    id_field: str | None = None,
    source: str = "table",
) -> dict[str, list[str]]:
    """``{annotation: [ids]}`` from a table with one or more rows per perturbagen.

    Parameters
    ----------
    table
        compoundinfo- or Repurposing-Hub-shaped table.
    field
        ``"moa"``: mechanisms of action; ``"target"``: gene targets. Values are split on
        ``|``; ``-666`` and empty values are missing.
    id_field
        Id column; default the first of ``pert_id``, ``broad_id``, ``pert_iname``,
        ``cmap_name`` present.
    source
        Name of the file, for error messages.

    Returns
    -------
    dict
        Sets sorted by name, members in first-seen order, each member once.

    Examples
    --------
    >>> t = pd.DataFrame({"pert_id": ["a", "b", "b"], "moa": ["X|Y", "X", "Z"]})
    >>> sets_from_table(t)
    {'X': ['a', 'b'], 'Y': ['a'], 'Z': ['b']}
    """
    if id_field is None:
        id_field = next((c for c in _ID_COLUMNS if c in table.columns), None)
        if id_field is None:
            raise MetadataError(
                f"{source}: no id column (expected one of {', '.join(_ID_COLUMNS)})"
            )
    for col in (id_field, field):
        if col not in table.columns:
            raise MetadataError(f"{source}: no column {col!r}")
    sets: dict[str, dict[str, None]] = {}
    for pid, value in zip(table[id_field].tolist(), table[field].tolist(), strict=False):
        ids = _split(pid)
        if len(ids) != 1:
            continue  # a row without an id annotates nothing
        for name in _split(value):
            sets.setdefault(name, {})[ids[0]] = None
    if not sets:
        raise MetadataError(f"{source}: no {field!r} annotation in any row")
    return {k: list(sets[k]) for k in sorted(sets)}


def _read_tsv(path, name: str) -> pd.DataFrame:
    from cmapdask.io.atomic import url_to_fs

    fs, p = url_to_fs(path)
    try:
        with fs.open(p, "rb", compression="infer") as f:
            raw = f.read()
    except FileNotFoundError:
        raise MetadataError(f"{path}: no such file") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    # the Repurposing Hub starts its files with '!' comment lines
    body = "\n".join(line for line in text.splitlines() if not line.startswith("!"))
    try:
        return pd.read_csv(io.StringIO(body), sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise MetadataError(
            f"{name}: not a tab-separated table: {str(e).splitlines()[0]}"
        ) from None


def read_annotations(
    path,
    *,
    format: Format = "auto",
    field: Field = "moa",
    id_field: str | None = None,
) -> dict[str, list[str]]:
    """Read MoA/target/PCL annotations as ``{set name: [perturbagen ids]}``.

    Parameters
    ----------
    path
        Local path or fsspec URL.
    format
        ``"gmt"``: a GMT file (set name, description, members); ``"compoundinfo"``: the
        release table; ``"repurposing"``: a Drug Repurposing Hub TSV (``!`` comment lines
        skipped); ``"auto"``: ``.gmt`` names are GMT, anything else a table.
    field
        Table formats: ``"moa"`` or ``"target"`` (multi-valued with ``|``).
    id_field
        Table formats: the id column (default ``pert_id``, else ``broad_id``,
        ``pert_iname``, ``cmap_name``).

    Notes
    -----
    Reads the whole file; holds O(rows) strings.
    """
    name = os.path.basename(str(path))
    if format not in ("auto", "compoundinfo", "repurposing", "gmt"):
        raise InputError(f"unknown annotation format {format!r}")
    if format == "gmt" or (
        format == "auto" and str(path).lower().split("?")[0].endswith((".gmt", ".gmt.gz"))
    ):
        from cmapdask.io.gmt import read_gmt

        return read_gmt(path)
    return sets_from_table(_read_tsv(path, name), field=field, id_field=id_field, source=name)


def labels_from_sets(sets: Mapping[str, Sequence[str]], ids: Sequence[str]) -> np.ndarray:
    """Per id, its set names joined with ``|`` (sorted), ``None`` when in no set."""
    of: dict[str, list[str]] = {}
    for name, members in sets.items():
        for m in members:
            of.setdefault(str(m), []).append(name)
    return np.array(
        ["|".join(sorted(of[i])) if i in of else None for i in map(str, ids)], dtype=object
    )


def membership(
    sets: Mapping[str, Sequence[str]], item_labels: Sequence
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Item x set incidence as coordinate lists.

    Parameters
    ----------
    sets
        ``{set name: member ids}``; an empty set is an error.
    item_labels
        The id of each item (for example a signature's ``pert_id``); several items may
        share an id, and ``None`` belongs to no set.

    Returns
    -------
    names, item_index, set_index
        Set names in input order and the ``(item, set)`` pairs of every membership
        (item-major, sorted), as int64 arrays.
    """
    if not sets:
        raise InputError("no annotation sets given")
    names = list(sets)
    pos: dict[str, list[int]] = {}
    for s, name in enumerate(names):
        members = [str(m) for m in sets[name]]
        if not members:
            raise InputError(f"annotation set {name!r} is empty")
        for m in dict.fromkeys(members):
            pos.setdefault(m, []).append(s)
    items, set_idx = [], []
    for i, lab in enumerate(item_labels):
        if is_missing(lab):
            continue
        for s in pos.get(str(lab), ()):
            items.append(i)
            set_idx.append(s)
    it, st = np.asarray(items, np.int64), np.asarray(set_idx, np.int64)
    order = np.lexsort((st, it))
    return names, it[order], st[order]


def shuffle_sets(
    sets: Mapping[str, Sequence[str]], universe: Sequence[str], *, seed: int = 0
) -> dict[str, list[str]]:
    """The same set sizes with members drawn from ``universe`` at random (a calibration null)."""
    rng = np.random.default_rng(seed)
    universe = np.asarray(list(dict.fromkeys(map(str, universe))), dtype=object)
    out = {}
    for name, members in sets.items():
        n = min(len(set(members)), universe.size)
        out[name] = list(universe[rng.choice(universe.size, n, replace=False)])
    return out


def write_annotation_table(sets: Mapping[str, Sequence[str]], path) -> str:
    """Long table ``set<TAB>id`` (TSV, or Parquet for ``.parquet`` names), written atomically."""
    from cmapdask.io.atomic import publish_file

    df = pd.DataFrame([(k, m) for k, ms in sets.items() for m in ms], columns=["set", "id"])
    with publish_file(path) as tmp:
        if str(path).endswith(".parquet"):
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, sep="\t", index=False)
    return str(path)
