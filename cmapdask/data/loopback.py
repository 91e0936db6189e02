"""CLUE's API filters (LoopBack's ``filter`` JSON) over a store's tables.

``parse_filter('{"where": {"pert_id": {"inq": ["BRD-K1", "BRD-K2"]}}, "limit": 5}',
model)`` checks every key against the model's fields and LoopBack's operators and returns
an immutable :class:`Filter`; :func:`select` and :func:`count` apply it with numpy masks
over the model's table (:func:`model_table`). Nothing is evaluated: a filter is data, an
unknown field, operator or key is an :class:`~cmapdask.errors.InputError` naming it, never
a silently unfiltered answer.

The models are CLUE's: ``sigs`` (siginfo), ``perts`` (compounds and genetic
perturbagens), ``cells``, ``genes``, ``pcls`` (the server's PCL sets) and ``profiles``
(Level 3/4 profiles: the release's ``instinfo``, or a Level 3/4 store's own rows), with
CLUE's field names (``pert_iname``, ``cell_id``, ``distil_id``); the 2020 release's names
(``cmap_name``, ``cell_iname``, ``sample_id``) are accepted as aliases wherever a field is
named.

Operators (LoopBack's): equality (``{"f": v}`` or ``{"f": {"eq": v}}``), ``neq``, ``inq``,
``nin``, ``gt``, ``gte``, ``lt``, ``lte``, ``between``, ``like``/``nlike`` (a regular
expression, as LoopBack's MongoDB connector takes it; ``"options": "i"`` ignores case),
``ilike``/``nilike`` (the same, case-insensitive); ``and``/``or`` over lists of where
objects. On list fields (a compound's ``moa`` and ``target``) a condition holds when it
holds for any element, as in MongoDB.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cmapdask.errors import InputError

__all__ = ["MODELS", "Filter", "parse_filter", "parse_where", "select", "count", "model_table"]

MODELS = ("sigs", "perts", "cells", "genes", "pcls", "profiles")
# the 2020 release's names -> CLUE's (the API answers with CLUE's)
RENAME = {"cmap_name": "pert_iname", "cell_iname": "cell_id", "sample_id": "distil_id"}
ALIASES = {"cmap_name": "pert_iname", "cell_iname": "cell_id", "pr_gene_id": "gene_id"}
ALIASES |= {"pr_gene_symbol": "gene_symbol", "sample_id": "distil_id"}
LIST_FIELDS = frozenset({"moa", "target", "pert_ids"})
OPERATORS = frozenset(
    {"eq", "neq", "inq", "nin", "gt", "gte", "lt", "lte", "between"}
    | {"like", "nlike", "ilike", "nilike", "options"}
)
FILTER_KEYS = frozenset({"where", "fields", "order", "limit", "skip", "offset"})
MAX_LIMIT = 100_000
DEFAULT_LIMIT = 1_000
_MAX_PATTERN = 200


@dataclass(frozen=True)
class Cond:
    field: str
    op: str
    value: Any
    flags: int = 0


@dataclass(frozen=True)
class Group:
    kind: str  # "and" | "or"
    parts: tuple


@dataclass(frozen=True)
class Filter:
    """A checked filter: ``where`` tree, chosen ``fields``, ``order``, ``skip``, ``limit``."""

    where: Group
    fields: tuple[str, ...] | None
    order: tuple[tuple[str, bool], ...]  # (field, ascending)
    skip: int
    limit: int


# ------------------------------------------------------------------------------ parsing


def _loads(text, what: str):
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError as e:
        raise InputError(f"{what}: not JSON ({e.msg} at character {e.pos})") from None


def _field(name, fields: frozenset, model: str) -> str:
    if not isinstance(name, str):
        raise InputError(f"{model}: a field name must be text, not {name!r}")
    name = ALIASES.get(name, name)
    if name not in fields:
        raise InputError(f"{model}: unknown field {name!r} (fields: {', '.join(sorted(fields))})")
    return name


def _int(v, what: str, lo: int, hi: int | None = None) -> int:
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        bound = f" and at most {hi}" if hi is not None else ""
        raise InputError(f"{what} must be an integer of at least {lo}{bound}, not {v!r}")
    return v


def _scalar(v, what: str):
    if isinstance(v, bool | int | float | str) or v is None:
        return v
    raise InputError(f"{what}: a value must be text, a number, true/false or null, not {v!r}")


def _cond(field: str, spec, model: str) -> list[Cond]:
    if not isinstance(spec, dict):
        return [Cond(field, "eq", _scalar(spec, f"{model}.{field}"))]
    unknown = sorted(set(spec) - OPERATORS)
    if unknown:
        raise InputError(
            f"{model}.{field}: unknown operator {unknown[0]!r} "
            f"(operators: {', '.join(sorted(OPERATORS - {'options'}))})"
        )
    opts = spec.get("options", "")
    if not isinstance(opts, str) or set(opts) - set("i"):
        raise InputError(f"{model}.{field}: options must be '' or 'i', not {opts!r}")
    out = []
    for op, v in spec.items():
        if op == "options":
            continue
        what = f"{model}.{field}.{op}"
        if op in ("inq", "nin"):
            if not isinstance(v, list):
                raise InputError(f"{what}: needs a list of values, not {v!r}")
            out.append(Cond(field, op, tuple(_scalar(x, what) for x in v)))
        elif op == "between":
            if not isinstance(v, list) or len(v) != 2:
                raise InputError(f"{what}: needs a list of two values, not {v!r}")
            out.append(Cond(field, op, tuple(_scalar(x, what) for x in v)))
        elif op in ("like", "nlike", "ilike", "nilike"):
            if not isinstance(v, str) or len(v) > _MAX_PATTERN:
                raise InputError(f"{what}: needs a pattern of at most {_MAX_PATTERN} characters")
            flags = re.IGNORECASE if (op.startswith(("i", "ni")) or "i" in opts) else 0
            try:
                re.compile(v, flags)
            except re.error as e:
                raise InputError(f"{what}: not a regular expression ({e})") from None
            out.append(Cond(field, "nlike" if op.startswith("n") else "like", v, flags))
        else:
            out.append(Cond(field, op, _scalar(v, what)))
    if not out:
        raise InputError(f"{model}.{field}: no condition given")
    return out


def parse_where(where, fields, model: str) -> Group:
    """LoopBack's ``where`` object (or its JSON text) as a checked tree."""
    where = _loads(where, f"{model} where")
    fields = frozenset(fields)
    if where is None:
        return Group("and", ())
    if not isinstance(where, dict):
        raise InputError(f"{model} where: must be a JSON object, not {where!r}")
    parts: list = []
    for key, spec in where.items():
        if key in ("and", "or"):
            if not isinstance(spec, list) or not spec:
                raise InputError(f"{model} where.{key}: needs a non-empty list of where objects")
            parts.append(Group(key, tuple(parse_where(s, fields, model) for s in spec)))
        else:
            parts += _cond(_field(key, fields, model), spec, model)
    return Group("and", tuple(parts))


def _fields(spec, fields: frozenset, model: str) -> tuple[str, ...] | None:
    if spec is None:
        return None
    if isinstance(spec, str):
        spec = [spec]
    if isinstance(spec, list):
        return tuple(dict.fromkeys(_field(f, fields, model) for f in spec))
    if isinstance(spec, dict):
        chosen = {_field(f, fields, model): bool(v) for f, v in spec.items()}
        if any(chosen.values()):
            return tuple(f for f, v in chosen.items() if v)
        return tuple(f for f in sorted(fields) if f not in chosen)
    raise InputError(f"{model} fields: a list of names or an object, not {spec!r}")


def _order(spec, fields: frozenset, model: str) -> tuple[tuple[str, bool], ...]:
    if spec is None:
        return ()
    items = [spec] if isinstance(spec, str) else spec
    if not isinstance(items, list):
        raise InputError(f"{model} order: 'field ASC|DESC' or a list of them, not {spec!r}")
    out = []
    for item in items:
        words = item.split() if isinstance(item, str) else []
        if not 1 <= len(words) <= 2 or (
            len(words) == 2 and words[1].upper() not in ("ASC", "DESC")
        ):
            raise InputError(f"{model} order: {item!r} is not 'field ASC' or 'field DESC'")
        out.append((_field(words[0], fields, model), len(words) == 1 or words[1].upper() == "ASC"))
    return tuple(out)


def parse_filter(text, fields, model: str, *, default_limit: int = DEFAULT_LIMIT) -> Filter:
    """LoopBack's ``filter`` (JSON text or a dict) for ``model`` with columns ``fields``."""
    f = _loads(text, f"{model} filter") if text not in (None, "") else {}
    if not isinstance(f, dict):
        raise InputError(f"{model} filter: must be a JSON object, not {f!r}")
    unknown = sorted(set(f) - FILTER_KEYS)
    if unknown:
        raise InputError(
            f"{model} filter: unknown key {unknown[0]!r} (keys: {', '.join(sorted(FILTER_KEYS))})"
        )
    fields = frozenset(fields)
    skip = f.get("skip", f.get("offset", 0))
    limit = f.get("limit", default_limit)
    return Filter(
        where=parse_where(f.get("where"), fields, model),
        fields=_fields(f.get("fields"), fields, model),
        order=_order(f.get("order"), fields, model),
        skip=_int(skip, f"{model} filter skip", 0),
        limit=_int(limit, f"{model} filter limit", 0, MAX_LIMIT),
    )


# ----------------------------------------------------------------------------- applying


def _elements(col: pd.Series, is_list: bool) -> tuple[pd.Series, np.ndarray]:
    """(values, row of each value): list fields exploded, one value per element."""
    if not is_list:
        return col, np.arange(len(col))
    ex = col.explode()
    return ex, np.asarray(pd.Index(col.index).get_indexer(ex.index))


def _numeric(col: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)


def _compare(values: pd.Series, c: Cond) -> np.ndarray:
    present = values.notna().to_numpy()
    if c.op in ("like", "nlike"):
        rx = re.compile(c.value, c.flags)
        hit = np.array(
            [bool(rx.search(str(v))) if p else False for v, p in zip(values, present, strict=True)],
            bool,
        )
        return hit
    numeric = _numeric(values)

    def coerce(v):
        if v is None:
            return None
        if numeric:
            try:
                return float(v)
            except (TypeError, ValueError):
                raise InputError(f"{c.field}: a number is needed, not {v!r}") from None
        return str(v) if not isinstance(v, str) else v

    vals = (
        values
        if numeric
        else values.map(lambda x: x if x is None or isinstance(x, str) else str(x))
    )
    if c.op in ("eq", "neq"):
        v = coerce(c.value)
        hit = (
            ~present if v is None else (present & (vals == v).to_numpy(dtype=bool, na_value=False))
        )
        return hit
    if c.op in ("inq", "nin"):
        wanted = {coerce(v) for v in c.value}
        hit = vals.isin([w for w in wanted if w is not None]).to_numpy(dtype=bool) & present
        if None in wanted:
            hit |= ~present
        return hit
    if c.op == "between":
        lo, hi = (coerce(v) for v in c.value)
        return (
            present
            & (vals >= lo).to_numpy(dtype=bool, na_value=False)
            & (vals <= hi).to_numpy(dtype=bool, na_value=False)
        )
    v = coerce(c.value)
    op = {"gt": "__gt__", "gte": "__ge__", "lt": "__lt__", "lte": "__le__"}[c.op]
    return present & getattr(vals, op)(v).to_numpy(dtype=bool, na_value=False)


def _mask(df: pd.DataFrame, node) -> np.ndarray:
    if isinstance(node, Group):
        parts = [_mask(df, p) for p in node.parts]
        if not parts:
            return np.ones(len(df), bool)
        return np.logical_and.reduce(parts) if node.kind == "and" else np.logical_or.reduce(parts)
    is_list = node.field in LIST_FIELDS
    negate = node.op in ("neq", "nin", "nlike")
    positive = Cond(
        node.field,
        {"neq": "eq", "nin": "inq", "nlike": "like"}.get(node.op, node.op),
        node.value,
        node.flags,
    )
    values, rows = _elements(df[node.field], is_list)
    hit_el = _compare(values.reset_index(drop=True), positive)
    hit = np.zeros(len(df), bool)
    np.logical_or.at(hit, rows[hit_el], True)
    return ~hit if negate else hit


def select(df: pd.DataFrame, flt: Filter) -> pd.DataFrame:
    """The rows of ``df`` that ``flt`` selects, ordered, paged and with its fields."""
    out = df.loc[_mask(df, flt.where)]
    if flt.order:
        out = out.sort_values(
            [f for f, _ in flt.order], ascending=[a for _, a in flt.order], kind="stable"
        )
    out = out.iloc[flt.skip : flt.skip + flt.limit]
    if flt.fields is not None:
        out = out[list(flt.fields)]
    return out.reset_index(drop=True)


def count(df: pd.DataFrame, where: Group) -> int:
    return int(_mask(df, where).sum())


def records(df: pd.DataFrame) -> list[dict]:
    """JSON-ready rows: missing as null, list fields as lists, numpy scalars as Python's."""
    out = []
    for row in df.to_dict(orient="records"):
        clean = {}
        for k, v in row.items():
            if isinstance(v, list | tuple | np.ndarray):
                clean[k] = [x.item() if hasattr(x, "item") else x for x in v]
            elif v is None or (isinstance(v, float) and v != v):
                clean[k] = None
            else:
                clean[k] = v.item() if hasattr(v, "item") else v
        out.append(clean)
    return out


# ------------------------------------------------------------------------------- models


def _clue_names(df: pd.DataFrame) -> pd.DataFrame:
    df = df.rename(columns={k: v for k, v in RENAME.items() if k in df.columns and v not in df})
    return df


def _split(col: pd.Series) -> pd.Series:
    return col.map(
        lambda v: (
            []
            if v is None or v != v or v == ""
            else [p.strip() for p in str(v).split("|") if p.strip()]
        )
    )


def model_table(
    tables: dict[str, pd.DataFrame], model: str, *, pcls=None, profiles: bool = False
) -> pd.DataFrame:
    """The table behind CLUE's ``/api/<model>``, from the store's tables (pandas frames).

    ``pcls``: ``{name: [pert_id, ...]}`` for the ``pcls`` model. ``profiles``: the store's
    rows are Level 3/4 profiles (its ``siginfo`` is then the ``profiles`` model when it
    has no ``instinfo``).
    """
    if model not in MODELS:
        raise InputError(f"unknown model {model!r} (models: {', '.join(MODELS)})")
    if model == "profiles":
        if "instinfo" in tables:
            return _clue_names(tables["instinfo"])
        if not profiles:
            raise InputError(
                "profiles: this store holds Level 5 signatures and no instinfo table; "
                "profiles are answered for Level 3/4 stores"
            )
        return _clue_names(tables["siginfo"].rename(columns={"sig_id": "distil_id"}))
    if model == "sigs":
        return _clue_names(tables["siginfo"])
    if model == "cells":
        return _clue_names(tables["cellinfo"])
    if model == "genes":
        return tables["geneinfo"].copy()
    if model == "pcls":
        rows = [
            {"pcl_id": n, "pert_ids": list(m), "n_perts": len(m)} for n, m in (pcls or {}).items()
        ]
        return pd.DataFrame(rows, columns=["pcl_id", "pert_ids", "n_perts"])
    frames = []
    if "compoundinfo" in tables:
        cp = _clue_names(tables["compoundinfo"]).copy()
        cp.insert(2, "pert_type", "trt_cp")
        for f in ("moa", "target"):
            if f in cp:
                cp[f] = _split(cp[f])
        frames.append(cp)
    if "geneticinfo" in tables:
        frames.append(_clue_names(tables["geneticinfo"]))
    if not frames:  # a store without perturbagen tables: what siginfo says of them
        sig = _clue_names(tables["siginfo"])
        cols = [c for c in ("pert_id", "pert_iname", "pert_type") if c in sig]
        frames.append(sig[cols].drop_duplicates("pert_id"))
    return pd.concat(frames, ignore_index=True)
