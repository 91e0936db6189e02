"""Gene sets: GMT and GRP files (ALGORITHMS.md §10) and up/down query pairs.

GMT: one set per line, ``name<TAB>description<TAB>gene<TAB>gene...``.
GRP: one gene id per line; ``#`` starts a comment line.

Rules (cmapPy's, whose malformed fixtures ``test_bad.gmt`` and ``test_bad2.gmt`` must be
rejected, plus the checks a query needs):

- a GMT line needs at least three tab-separated fields (name, description, one gene);
- a gene listed twice in one set, a set name used twice, a set with no genes, and an
  empty set name are errors (GeneSetFormatError naming the file and line);
- blank lines are skipped; empty fields (trailing tabs) are dropped; ids are stripped.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Mapping

from cmapdask.errors import GeneSetFormatError, InputError, QueryError
from cmapdask.io.atomic import publish_file
from cmapdask.io.gct import read_bytes, text_encoding
from cmapdask.io.pending import deferrable

__all__ = [
    "read_gmt",
    "write_gmt",
    "read_gmx",
    "read_grp",
    "write_grp",
    "read_gene_sets",
    "pair_up_down",
]

_UP = re.compile(r"^(.*)_UP$", re.IGNORECASE)
_DN = re.compile(r"^(.*)_DN$", re.IGNORECASE)
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst")


def _lines(path, storage_options: dict | None) -> list[str]:
    raw = read_bytes(path, storage_options=storage_options, error=GeneSetFormatError)
    return raw.decode(text_encoding(raw)).splitlines()


def read_gmt(path, *, storage_options: dict | None = None) -> dict[str, list[str]]:
    """Read a GMT file as ``{set name: [gene ids]}`` in file order.

    Parameters
    ----------
    path
        Local path or fsspec URL (compression inferred from the name).
    storage_options
        Passed to fsspec for remote paths.

    Returns
    -------
    dict[str, list[str]]
        Sets in file order; genes in file order. Descriptions are not kept.

    Raises
    ------
    GeneSetFormatError
        A line with fewer than three tab-separated fields, an empty name, a set with no
        genes, a gene listed twice in a set, a set name used twice, or no sets at all.

    Notes
    -----
    Reads the whole file (gene-set files are small). Bytes that are not valid UTF-8 are
    decoded as latin-1.

    Examples
    --------
    >>> read_gmt("tests/data/cmappy/test.gmt")
    {'A': ['a1', 'a3', 'a2'], 'B': ['b4', 'b2', 'b3']}
    """
    sets: dict[str, list[str]] = {}
    where: dict[str, int] = {}
    for lineno, line in enumerate(_lines(path, storage_options), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 3:
            raise GeneSetFormatError(
                f"{path}: line {lineno}: expected name<TAB>description<TAB>genes..., found "
                f"{len(fields)} tab-separated field(s)"
            )
        name = fields[0].strip()
        if not name:
            raise GeneSetFormatError(f"{path}: line {lineno}: empty set name")
        if name in sets:
            raise GeneSetFormatError(
                f"{path}: line {lineno}: set name {name!r} already used on line {where[name]}"
            )
        genes = [g.strip() for g in fields[2:]]
        genes = [g for g in genes if g]
        if not genes:
            raise GeneSetFormatError(f"{path}: line {lineno}: set {name!r} has no genes")
        dup = _first_duplicate(genes)
        if dup is not None:
            raise GeneSetFormatError(
                f"{path}: line {lineno}: set {name!r} lists gene {dup!r} more than once"
            )
        sets[name], where[name] = genes, lineno
    if not sets:
        raise GeneSetFormatError(f"{path}: no gene sets in the file")
    return sets


def read_gmx(path, *, storage_options: dict | None = None) -> dict[str, list[str]]:
    """Read a GMX file (GMT by columns: names on the first row, descriptions on the second,
    then each column's genes) as ``{set name: [gene ids]}`` in column order.

    Raises
    ------
    GeneSetFormatError
        Fewer than three rows, an empty or repeated name, a set with no genes or a gene
        listed twice in a set.
    """
    rows = [line.split("\t") for line in _lines(path, storage_options)]
    while rows and not any(c.strip() for c in rows[-1]):
        rows.pop()
    if len(rows) < 3:
        raise GeneSetFormatError(
            f"{path}: a GMX file has a row of names, a row of descriptions and rows of "
            f"genes; found {len(rows)} row(s)"
        )
    names = [n.strip() for n in rows[0]]
    sets: dict[str, list[str]] = {}
    for j, name in enumerate(names):
        if not name:
            if any(j < len(r) and r[j].strip() for r in rows[2:]):
                raise GeneSetFormatError(f"{path}: column {j + 1}: genes under an empty name")
            continue
        if name in sets:
            raise GeneSetFormatError(f"{path}: column {j + 1}: set name {name!r} used twice")
        genes = [r[j].strip() for r in rows[2:] if j < len(r) and r[j].strip()]
        if not genes:
            raise GeneSetFormatError(f"{path}: column {j + 1}: set {name!r} has no genes")
        dup = _first_duplicate(genes)
        if dup is not None:
            raise GeneSetFormatError(
                f"{path}: column {j + 1}: set {name!r} lists gene {dup!r} more than once"
            )
        sets[name] = genes
    if not sets:
        raise GeneSetFormatError(f"{path}: no gene sets in the file")
    return sets


def read_grp(path, *, storage_options: dict | None = None) -> list[str]:
    """Read a GRP file: one id per line, ``#`` comment lines and blank lines skipped.

    Raises
    ------
    GeneSetFormatError
        A line with a tab (GRP holds one id per line), or no ids.

    Warns
    -----
    UserWarning
        An id listed more than once (cmapM's own lists repeat lines): the first listing
        is kept, the repeats are dropped.

    Notes
    -----
    Reads the whole file. Bytes that are not valid UTF-8 are decoded as latin-1.

    Examples
    --------
    >>> read_grp("tests/data/cmappy/test.grp")
    ['r', 'd', 'e']
    """
    ids: list[str] = []
    where: dict[str, int] = {}
    repeats: list[tuple[int, str]] = []
    for lineno, line in enumerate(_lines(path, storage_options), start=1):
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        if "\t" in item:
            raise GeneSetFormatError(
                f"{path}: line {lineno}: a GRP line holds one id, found tab-separated fields "
                "(is this a GMT file?)"
            )
        if item in where:
            repeats.append((lineno, item))
            continue
        where[item] = lineno
        ids.append(item)
    if not ids:
        raise GeneSetFormatError(f"{path}: no ids in the file")
    if repeats:
        lineno, item = repeats[0]
        warnings.warn(
            f"{path}: {len(repeats)} repeated line(s) ignored, the first listing kept "
            f"(first: id {item!r} on line {lineno}, listed on line {where[item]})",
            UserWarning,
            stacklevel=2,
        )
    return ids


def _first_duplicate(items: Iterable[str]) -> str | None:
    seen: set[str] = set()
    for item in items:
        if item in seen:
            return item
        seen.add(item)
    return None


def _check_ids(ids, what: str, fn: str) -> list[str]:
    out = [str(i) for i in ids]
    for i in out:
        if not i.strip() or i != i.strip() or any(c in i for c in "\t\n\r"):
            raise InputError(
                f"{fn}: {what} has an empty id, surrounding spaces or a tab/line break: {i!r}"
            )
    dup = _first_duplicate(out)
    if dup is not None:
        raise InputError(f"{fn}: {what} lists {dup!r} more than once")
    if not out:
        raise InputError(f"{fn}: {what} is empty")
    return out


@deferrable("GMT file", "path")
def write_gmt(
    sets: Mapping[str, Iterable[str]],
    path,
    *,
    descriptions: Mapping[str, str] | None = None,
    storage_options: dict | None = None,
    compute: bool = True,
) -> str:
    """Write gene sets as a GMT file, atomically.

    Parameters
    ----------
    sets
        ``{name: genes}``; written in mapping order.
    path
        Destination, local path or fsspec URL.
    descriptions
        Optional ``{name: description}``; a set without one gets its name as description.
    storage_options
        Passed to fsspec for remote paths.
    compute
        ``False``: read, write and compute nothing now; return a
        :class:`~cmapdask.io.pending.PendingWrite` whose ``.compute()`` does the write.

    Returns
    -------
    str
        The destination path.

    Raises
    ------
    InputError
        No sets, an empty set, a gene listed twice in a set, or names, genes or
        descriptions with tabs or line breaks (anything ``read_gmt`` would reject).
    """
    if not sets:
        raise InputError("write_gmt: no gene sets to write")
    descriptions = descriptions or {}
    lines = []
    for name, genes in sets.items():
        (name,) = _check_ids([name], "a set name", "write_gmt")
        genes = _check_ids(genes, f"set {name!r}", "write_gmt")
        desc = str(descriptions.get(name, name))
        if any(c in desc for c in "\t\n\r"):
            raise InputError(f"write_gmt: description of set {name!r} has a tab or line break")
        lines.append("\t".join([name, desc, *genes]))
    return _write_lines(lines, path, storage_options)


@deferrable("GRP file", "path")
def write_grp(
    ids: Iterable[str], path, *, storage_options: dict | None = None, compute: bool = True
) -> str:
    """Write ids as a GRP file (one per line), atomically.

    Parameters
    ----------
    compute
        ``False``: read, write and compute nothing now; return a
        :class:`~cmapdask.io.pending.PendingWrite` whose ``.compute()`` does the write.

    Raises
    ------
    InputError
        No ids, an id listed twice, an id starting with ``#`` (it would read back as a
        comment), or an id with a tab or line break.
    """
    ids = _check_ids(ids, "the id list", "write_grp")
    bad = next((i for i in ids if i.startswith("#")), None)
    if bad is not None:
        raise InputError(f"write_grp: id {bad!r} starts with '#', which GRP reads as a comment")
    return _write_lines(ids, path, storage_options)


def _write_lines(lines: list[str], path, storage_options: dict | None) -> str:
    with publish_file(path, storage_options=storage_options) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(lines) + "\n")
    return str(path)


def _kind(path, storage_options: dict | None) -> str:
    name = os.fspath(path).lower() if not isinstance(path, str) else path.lower()
    for ext in _COMPRESSED:
        name = name.removesuffix(ext)
    if name.endswith(".gmt"):
        return "gmt"
    if name.endswith(".grp"):
        return "grp"
    if name.endswith(".gmx"):
        return "gmx"
    # Unknown extension: a GMT line has at least two tabs, a GRP line none.
    for line in _lines(path, storage_options):
        if line.strip() and not line.lstrip().startswith("#"):
            return "gmt" if line.count("\t") >= 2 else "grp"
    return "grp"


def read_gene_sets(path, *, storage_options: dict | None = None) -> dict[str, list[str]]:
    """Read a GMT, GMX or GRP file as ``{set name: [gene ids]}``.

    The format comes from the extension (``.gmt``/``.gmx``/``.grp``, optionally
    compressed) or,
    failing that, from the first data line (two or more tabs means GMT). A GRP file is one
    set named after the file (``HDAC_UP.grp`` -> ``"HDAC_UP"``).

    Examples
    --------
    >>> sets = read_gene_sets("tests/data/cmapm/HDAC_UP.grp")
    >>> list(sets), len(sets["HDAC_UP"])
    (['HDAC_UP'], 14)
    """
    kind = _kind(path, storage_options)
    if kind == "gmt":
        return read_gmt(path, storage_options=storage_options)
    if kind == "gmx":
        return read_gmx(path, storage_options=storage_options)
    name = os.path.basename(str(path).rstrip("/"))
    for ext in _COMPRESSED:
        name = name.removesuffix(ext)
    return {os.path.splitext(name)[0]: read_grp(path, storage_options=storage_options)}


def _query_ids(sets: Mapping[str, list[str]], pattern: re.Pattern, what: str) -> dict:
    """``{query id: (set name, genes)}``, the suffix stripped where it is present."""
    out: dict[str, tuple[str, list[str]]] = {}
    for name, genes in sets.items():
        m = pattern.match(name)
        qid = m.group(1) if m else name
        if qid in out:
            raise QueryError(f"{what} sets {out[qid][0]!r} and {name!r} both name query {qid!r}")
        out[qid] = (name, list(genes))
    return out


def pair_up_down(
    up: Mapping[str, list[str]], down: Mapping[str, list[str]] | None = None
) -> dict[str, tuple[list[str], list[str]]]:
    """Pair up and down gene sets into queries ``{query id: (up genes, down genes)}``.

    Parameters
    ----------
    up
        With ``down`` omitted: one collection holding both directions, named ``X_UP`` and
        ``X_DN`` (suffixes matched case-insensitively); ``X`` is the query id. With
        ``down``: the up sets.
    down
        The down sets. Sets are paired by name after stripping ``_UP`` from up names and
        ``_DN`` from down names where present, so both ``X_UP``/``X_DN`` files and two
        files using the same names pair up.

    Returns
    -------
    dict
        Queries in the order of the up sets.

    Raises
    ------
    QueryError
        A set without a partner (named in the message), a set in a combined collection
        without an ``_UP``/``_DN`` suffix, or two sets naming the same query.

    Examples
    --------
    >>> pair_up_down({"X_UP": ["a"], "X_DN": ["b"]})
    {'X': (['a'], ['b'])}
    >>> pair_up_down({"q1": ["a"]}, {"q1": ["b"]})
    {'q1': (['a'], ['b'])}
    """
    if down is None:
        ups, downs = {}, {}
        for name, genes in up.items():
            if _UP.match(name):
                ups[name] = genes
            elif _DN.match(name):
                downs[name] = genes
            else:
                raise QueryError(
                    f"gene set {name!r} ends in neither _UP nor _DN, so it cannot be paired"
                )
        up, down = ups, downs
    up_q = _query_ids(up, _UP, "up")
    down_q = _query_ids(down, _DN, "down")
    for qid, (name, _) in up_q.items():
        if qid not in down_q:
            raise QueryError(f"up set {name!r} has no down set for query {qid!r}")
    for qid, (name, _) in down_q.items():
        if qid not in up_q:
            raise QueryError(f"down set {name!r} has no up set for query {qid!r}")
    return {qid: (genes, down_q[qid][1]) for qid, (_, genes) in up_q.items()}
