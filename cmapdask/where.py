"""Signature filters: a small language of field comparisons, parsed, never evaluated as code.

``parse("pert_type == 'trt_cp' and cell_id in ('MCF7', 'PC3')")`` returns an immutable
expression tree; :meth:`Expr.mask` applies it to a table of metadata fields and
:meth:`Expr.to_data` / :meth:`Expr.from_data` turn it into plain JSON data (lists, strings,
numbers), which is what stores record. Nothing here hands text to ``eval``, pandas'
``DataFrame.eval``/``query`` or any other interpreter.

The language
------------
- comparisons ``==  !=  <  <=  >  >=`` between a field and a literal (either side) or
  between two fields; ``field in (a, b)``, ``field not in [a, b]`` with literal lists;
- ``and``, ``or``, ``not`` (that precedence, lowest first) and parentheses;
- field names: identifiers (``pert_id``) or backquoted (```pert id.1```, a backquote
  inside doubled: ``````);
- literals: ``'text'`` or ``"text"`` (backslash escapes the quote and itself), integers,
  decimals (``-1.5e3``), ``True`` and ``False``.

Anything else (calls, attributes, ``@`` variables, arithmetic, chained comparisons) is an
:class:`~cmapdask.errors.InputError` naming the expression and the position.

Missing values
--------------
A missing value (``None``, NaN) matches no comparison: ``x == v``, ``x < v``,
``x in (...)`` are all false where ``x`` is missing. ``!=`` and ``not in`` are exactly
the negations of ``==`` and ``in`` (as in pandas), so they are true where ``x`` is
missing; ``not (x == v)`` and ``x != v`` always select the same rows. A value of the other
kind (text against a number) does not match either; a numeric field compared with text is
an error, since it can never match.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cmapdask.errors import InputError

__all__ = [
    "Expr",
    "Field",
    "Literal",
    "Compare",
    "In",
    "And",
    "Or",
    "Not",
    "parse",
    "from_data",
    "as_expr",
    "selection_record",
    "selection_from_record",
    "selection_text",
]

COMPARISONS = ("==", "!=", "<", "<=", ">", ">=")
KEYWORDS = frozenset({"and", "or", "not", "in", "True", "False"})
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


# ------------------------------------------------------------------------------ the tree


class Expr:
    """A parsed filter. Immutable and hashable; equal trees compare equal.

    Methods
    -------
    mask(frame)
        Boolean numpy array, one entry per row of ``frame``.
    to_data()
        Plain JSON-able data; :func:`from_data` (or :meth:`Expr.from_data`) inverts it.
    fields()
        The field names the expression reads.
    ``str(expr)``
        Canonical text that :func:`parse` turns back into an equal tree.
    """

    __slots__ = ()

    def mask(self, frame, *, dim: str = "sig") -> np.ndarray:
        """Rows of ``frame`` the expression selects.

        Parameters
        ----------
        frame : pandas.DataFrame, xarray.Dataset or mapping of name -> 1-D array
            For a Dataset, the fields are its coordinates along ``dim`` (the ``dim``
            index itself is also available as ``sig_id`` when ``dim == "sig"``).
        dim : str
            The dimension of a Dataset whose coordinates are the fields.

        Returns
        -------
        numpy.ndarray of bool
        """
        table = _Table(frame, dim, self)
        out = self._mask(table)
        return np.asarray(out, dtype=bool)

    def to_data(self):
        """Plain data (lists, dicts, str, int, float, bool) that :func:`from_data` reads."""
        raise NotImplementedError

    @staticmethod
    def from_data(data) -> Expr:
        """The expression recorded by :meth:`to_data`."""
        return from_data(data)

    def fields(self) -> frozenset[str]:
        """Names of the fields the expression reads."""
        raise NotImplementedError

    def _mask(self, table) -> np.ndarray:
        raise NotImplementedError

    def _prec(self) -> int:  # 1 or, 2 and, 3 not, 4 comparison
        return 4


@dataclass(frozen=True, slots=True)
class Field:
    """A metadata field, by name."""

    name: str

    def __str__(self) -> str:
        if _IDENT.match(self.name) and self.name not in KEYWORDS:
            return self.name
        return "`" + self.name.replace("`", "``") + "`"


@dataclass(frozen=True, slots=True)
class Literal:
    """A constant: text, an integer, a finite float or a boolean."""

    value: str | int | float | bool

    def __post_init__(self):
        v = self.value
        if not isinstance(v, (str, int, float, bool)) or (
            isinstance(v, float) and not math.isfinite(v)
        ):
            raise InputError(f"bad literal {v!r} in expression (text, numbers, True, False)")

    def __eq__(self, other):  # 1 == 1.0 == True in Python; keep the kinds apart
        return (
            isinstance(other, Literal)
            and type(self.value) is type(other.value)
            and self.value == other.value
        )

    def __hash__(self):
        return hash((type(self.value).__name__, self.value))

    def __str__(self) -> str:
        v = self.value
        if isinstance(v, bool):
            return "True" if v else "False"
        if isinstance(v, str):
            return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
        return repr(v)


Operand = Field | Literal


def _operand_data(o: Operand):
    return {"field": o.name} if isinstance(o, Field) else {"value": o.value}


@dataclass(frozen=True, slots=True)
class Compare(Expr):
    """``left op right`` with ``op`` one of ``== != < <= > >=``; at least one side a field."""

    op: str
    left: Operand
    right: Operand

    def __post_init__(self):
        if self.op not in COMPARISONS:
            raise InputError(f"bad comparison {self.op!r} in expression")
        if not (isinstance(self.left, Field) or isinstance(self.right, Field)):
            raise InputError(f"comparison {self} names no field")

    def __str__(self) -> str:
        return f"{self.left} {self.op} {self.right}"

    def to_data(self):
        return [self.op, _operand_data(self.left), _operand_data(self.right)]

    def fields(self):
        return frozenset(o.name for o in (self.left, self.right) if isinstance(o, Field))

    def _mask(self, table):
        return _compare(table, self.op, self.left, self.right, self)


@dataclass(frozen=True, slots=True)
class In(Expr):
    """``field in (values)``, or ``not in`` when ``negate``."""

    field: Field
    values: tuple[Literal, ...]
    negate: bool = False

    def __post_init__(self):
        if not isinstance(self.field, Field):
            raise InputError("'in' needs a field on its left")
        if not all(isinstance(v, Literal) for v in self.values):
            raise InputError("'in' needs a list of literals")

    def __str__(self) -> str:
        vals = ", ".join(str(v) for v in self.values)
        if len(self.values) == 1:
            vals += ","
        return f"{self.field} {'not in' if self.negate else 'in'} ({vals})"

    def to_data(self):
        return [
            "not in" if self.negate else "in",
            _operand_data(self.field),
            [v.value for v in self.values],
        ]

    def fields(self):
        return frozenset({self.field.name})

    def _mask(self, table):
        col = table.column(self.field.name)
        hit = np.zeros(len(col), dtype=bool)
        for v in self.values:
            hit |= _compare_values(col, "==", v.value, self, self.field.name)
        return ~hit if self.negate else hit


@dataclass(frozen=True, slots=True)
class Not(Expr):
    """``not item``."""

    item: Expr

    def __str__(self) -> str:
        return "not " + _wrap(self.item, 3)

    def _prec(self):
        return 3

    def to_data(self):
        return ["not", self.item.to_data()]

    def fields(self):
        return self.item.fields()

    def _mask(self, table):
        return ~self.item._mask(table)


@dataclass(frozen=True, slots=True)
class And(Expr):
    """``a and b and ...`` (two or more items)."""

    items: tuple[Expr, ...]

    def __post_init__(self):
        if len(self.items) < 2:
            raise InputError("'and' needs two or more items")

    def __str__(self) -> str:
        return " and ".join(_wrap(i, 3) for i in self.items)

    def _prec(self):
        return 2

    def to_data(self):
        return ["and", *[i.to_data() for i in self.items]]

    def fields(self):
        return frozenset().union(*(i.fields() for i in self.items))

    def _mask(self, table):
        out = self.items[0]._mask(table)
        for i in self.items[1:]:
            out = out & i._mask(table)
        return out


@dataclass(frozen=True, slots=True)
class Or(Expr):
    """``a or b or ...`` (two or more items)."""

    items: tuple[Expr, ...]

    def __post_init__(self):
        if len(self.items) < 2:
            raise InputError("'or' needs two or more items")

    def __str__(self) -> str:
        return " or ".join(_wrap(i, 2) for i in self.items)

    def _prec(self):
        return 1

    def to_data(self):
        return ["or", *[i.to_data() for i in self.items]]

    def fields(self):
        return frozenset().union(*(i.fields() for i in self.items))

    def _mask(self, table):
        out = self.items[0]._mask(table)
        for i in self.items[1:]:
            out = out | i._mask(table)
        return out


def _wrap(e: Expr, minimum: int) -> str:
    """``e`` as text, parenthesised where its precedence is below ``minimum``."""
    return str(e) if e._prec() >= minimum else f"({e})"


# ------------------------------------------------------------------------------ evaluation


class _Table:
    """Columns by name from a DataFrame, Dataset or mapping; unknown names are errors."""

    def __init__(self, frame, dim, expr):
        self.expr = expr
        self.cols: dict = {}
        if isinstance(frame, pd.DataFrame):
            self.get = lambda k: frame[k].to_numpy() if k in frame.columns else None
            self.n = len(frame)
            self.names = [str(c) for c in frame.columns]
            return
        try:
            import xarray as xr
        except ImportError:  # pragma: no cover - xarray is a dependency
            xr = None
        if xr is not None and isinstance(frame, (xr.Dataset, xr.DataArray)):
            n = frame.sizes[dim]
            cols = {str(k): c for k, c in frame.coords.items() if c.dims == (dim,)}
            if dim == "sig" and "sig" in cols and "sig_id" not in cols:
                cols["sig_id"] = cols["sig"]
            self.get = lambda k: cols[k].values if k in cols else None
            self.n = n
            self.names = sorted(cols)
            return
        if isinstance(frame, Mapping):
            cols = {str(k): np.asarray(v) for k, v in frame.items()}
            lens = {len(v) for v in cols.values()}
            if len(lens) > 1:
                raise InputError(f"fields of unequal lengths for expression {str(expr)!r}")
            self.get = cols.get
            self.n = lens.pop() if lens else 0
            self.names = sorted(cols)
            return
        raise InputError(f"cannot filter a {type(frame).__name__} with an expression")

    def column(self, name: str) -> np.ndarray:
        if name not in self.cols:
            col = self.get(name)
            if col is None:
                shown = ", ".join(self.names[:12]) + (", ..." if len(self.names) > 12 else "")
                raise InputError(
                    f"expression {str(self.expr)!r}: no field {name!r} (fields: {shown})"
                )
            col = np.asarray(col)
            if col.ndim != 1 or len(col) != self.n:
                raise InputError(f"expression {str(self.expr)!r}: field {name!r} is not 1-D")
            self.cols[name] = col
        return self.cols[name]


def _numeric(col: np.ndarray) -> bool:
    return col.dtype.kind in "iufb"


def _is_num(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating, np.bool_))


def _missing(v) -> bool:
    return v is None or (isinstance(v, (float, np.floating)) and v != v) or v is pd.NA


_OPS = {
    "==": lambda a, b: a == b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def _compare_values(col: np.ndarray, op: str, value, expr, name) -> np.ndarray:
    """``col op value`` per row; missing and other-kind values never match."""
    if op == "!=":
        return ~_compare_values(col, "==", value, expr, name)
    if _numeric(col):
        if isinstance(value, str):
            raise InputError(
                f"expression {str(expr)!r}: field {name!r} is numeric, compared with text {value!r}"
            )
        with np.errstate(invalid="ignore"):
            return np.asarray(_OPS[op](col, value), dtype=bool)
    if op == "==":  # elementwise in C; missing and other kinds are never equal to a literal
        return np.asarray(col == value, dtype=bool)
    # ordering: only values of the literal's kind take part (C-level compares on them)
    kind = _IS_NUM if _is_num(value) else _IS_STR
    same = kind(col).astype(bool) if len(col) else np.zeros(0, dtype=bool)
    out = np.zeros(len(col), dtype=bool)
    if same.any():
        with np.errstate(invalid="ignore"):
            out[same] = np.asarray(_OPS[op](col[same], value), dtype=bool)
    return out


_IS_STR = np.frompyfunc(lambda v: isinstance(v, str), 1, 1)
_IS_NUM = np.frompyfunc(lambda v: _is_num(v) and not _missing(v), 1, 1)


def _compare(table, op, left, right, expr) -> np.ndarray:
    if isinstance(left, Literal):  # literal op field -> field flipped-op literal
        flip = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}.get(op, op)
        return _compare(table, flip, right, left, expr)
    a = table.column(left.name)
    if isinstance(right, Literal):
        return _compare_values(a, op, right.value, expr, left.name)
    b = table.column(right.name)
    if op == "!=":
        return ~_compare(table, "==", left, right, expr)
    if _numeric(a) and _numeric(b):
        with np.errstate(invalid="ignore"):
            return np.asarray(_OPS[op](a, b), dtype=bool)
    f = _OPS[op]
    out = np.zeros(len(a), dtype=bool)
    for i, (x, y) in enumerate(zip(a.tolist(), b.tolist(), strict=True)):
        if _missing(x) or _missing(y) or _is_num(x) != _is_num(y):
            continue
        if not _is_num(x) and not (isinstance(x, str) and isinstance(y, str)):
            continue
        out[i] = bool(f(x, y))
    return out


# ------------------------------------------------------------------------------ parsing

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<num>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<=|>=|<|>)
  | (?P<punct>[()\[\],])
  | (?P<quote>['"`])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # num, str, ident, field, op, punct, end
    value: object
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    i, n = 0, len(text)
    while i < n:
        m = _TOKEN.match(text, i)
        if m is None:
            raise _error(text, i, f"unexpected {text[i]!r}")
        kind = m.lastgroup
        if kind == "ws":
            i = m.end()
            continue
        if kind == "quote":
            q = text[i]
            j, buf = i + 1, []
            while True:
                if j >= n:
                    raise _error(text, i, "unterminated " + ("name" if q == "`" else "text"))
                c = text[j]
                if q == "`":
                    if c == "`":
                        if j + 1 < n and text[j + 1] == "`":
                            buf.append("`")
                            j += 2
                            continue
                        break
                elif c == "\\" and j + 1 < n and text[j + 1] in ("\\", q):
                    buf.append(text[j + 1])
                    j += 2
                    continue
                elif c == q:
                    break
                buf.append(c)
                j += 1
            if q == "`" and not buf:
                raise _error(text, i, "empty field name")
            out.append(_Tok("field" if q == "`" else "str", "".join(buf), i))
            i = j + 1
            continue
        s = m.group()
        if kind == "num":
            if m.end() < n and (text[m.end()].isalnum() or text[m.end()] in "_."):
                raise _error(text, i, f"bad number {text[i : m.end() + 1]!r}")
            try:
                v: object = int(s)
            except ValueError:
                v = float(s)
                if not math.isfinite(v):
                    raise _error(text, i, f"number {s!r} is out of range") from None
            out.append(_Tok("num", v, i))
        else:
            out.append(_Tok(kind, s, i))
        i = m.end()
    out.append(_Tok("end", None, n))
    return out


def _error(text: str, pos: int, what: str) -> InputError:
    return InputError(f"bad expression {text!r}: {what} at position {pos}")


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0

    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def word(self, w: str) -> bool:
        t = self.tok
        if t.kind == "ident" and t.value == w:
            self.i += 1
            return True
        return False

    def punct(self, p: str) -> bool:
        t = self.tok
        if t.kind == "punct" and t.value == p:
            self.i += 1
            return True
        return False

    def fail(self, what: str, tok: _Tok | None = None):
        t = tok or self.tok
        found = "the end" if t.kind == "end" else repr(self.text[t.pos : t.pos + 12])
        raise _error(self.text, t.pos, f"{what}, found {found}")

    def parse(self) -> Expr:
        if self.tok.kind == "end":
            raise _error(self.text, 0, "empty expression")
        e = self.or_()
        if self.tok.kind != "end":
            self.fail("expected 'and', 'or' or the end")
        return e

    def or_(self) -> Expr:
        items = [self.and_()]
        while self.word("or"):
            items.append(self.and_())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def and_(self) -> Expr:
        items = [self.not_()]
        while self.word("and"):
            items.append(self.not_())
        return items[0] if len(items) == 1 else And(tuple(items))

    def not_(self) -> Expr:
        if self.word("not"):
            return Not(self.not_())
        return self.primary()

    def primary(self) -> Expr:
        if self.punct("("):
            e = self.or_()
            if not self.punct(")"):
                self.fail("expected ')'")
            return e
        start = self.tok
        left = self.operand()
        t = self.tok
        if t.kind == "op":
            self.i += 1
            right = self.operand()
            if isinstance(left, Literal) and isinstance(right, Literal):
                self.fail("a comparison needs a field", start)
            if self.tok.kind == "op":
                self.fail("chained comparisons are not allowed")
            return Compare(str(t.value), left, right)
        negate = False
        if t.kind == "ident" and t.value == "not":
            nxt = self.toks[self.i + 1]
            if nxt.kind == "ident" and nxt.value == "in":
                self.i += 1
                negate = True
        if self.word("in"):
            if not isinstance(left, Field):
                self.fail("'in' needs a field on its left", start)
            return In(left, self.values(), negate)
        self.fail("expected a comparison (== != < <= > >=) or 'in'")

    def operand(self) -> Operand:
        t = self.tok
        if t.kind == "field":
            self.i += 1
            return Field(str(t.value))
        if t.kind == "ident":
            if t.value in ("True", "False"):
                self.i += 1
                return Literal(t.value == "True")
            if t.value in KEYWORDS:
                self.fail("expected a field or a value")
            self.i += 1
            return Field(str(t.value))
        return self.literal()

    def literal(self) -> Literal:
        t = self.tok
        if t.kind in ("str", "num"):
            self.i += 1
            return Literal(t.value)
        if t.kind == "ident" and t.value in ("True", "False"):
            self.i += 1
            return Literal(t.value == "True")
        self.fail("expected a field or a value")

    def values(self) -> tuple[Literal, ...]:
        if self.punct("("):
            close = ")"
        elif self.punct("["):
            close = "]"
        else:
            self.fail("expected '(' or '[' after 'in'")
        if self.tok.kind == "punct" and self.tok.value == close:
            self.fail("an empty list after 'in'")
        vals: list[Literal] = []
        while not self.punct(close):
            vals.append(self.literal())
            if not self.punct(","):
                if not self.punct(close):
                    self.fail(f"expected ',' or {close!r}")
                break
        return tuple(vals)


def parse(text: str) -> Expr:
    """Parse a filter expression (see the module docstring for the language).

    Raises
    ------
    InputError
        The text is not an expression of the language; the message names it and the
        position of the problem.
    """
    if not isinstance(text, str):
        raise InputError(f"an expression must be text, got {type(text).__name__}")
    return _Parser(text).parse()


def _operand_from(d, data):
    if isinstance(d, Mapping) and len(d) == 1:
        if "field" in d and isinstance(d["field"], str) and d["field"]:
            return Field(d["field"])
        if "value" in d:
            return Literal(d["value"])
    raise InputError(f"bad recorded expression {data!r}: operand {d!r}")


def from_data(data) -> Expr:
    """The :class:`Expr` recorded by :meth:`Expr.to_data` (lists may be tuples)."""
    if not isinstance(data, (list, tuple)) or not data or not isinstance(data[0], str):
        raise InputError(f"bad recorded expression {data!r}")
    head, rest = data[0], list(data[1:])
    try:
        if head in ("and", "or") and len(rest) >= 2:
            items = tuple(from_data(r) for r in rest)
            return And(items) if head == "and" else Or(items)
        if head == "not" and len(rest) == 1:
            return Not(from_data(rest[0]))
        if head in COMPARISONS and len(rest) == 2:
            return Compare(head, _operand_from(rest[0], data), _operand_from(rest[1], data))
        if head in ("in", "not in") and len(rest) == 2 and isinstance(rest[1], (list, tuple)):
            f = _operand_from(rest[0], data)
            if isinstance(f, Field) and rest[1]:
                return In(f, tuple(Literal(v) for v in rest[1]), head == "not in")
    except InputError as e:
        raise InputError(f"bad recorded expression {data!r}: {e}") from None
    raise InputError(f"bad recorded expression {data!r}")


def as_expr(obj) -> Expr:
    """An :class:`Expr` from an Expr, expression text, or recorded data."""
    if isinstance(obj, Expr):
        return obj
    if isinstance(obj, str):
        return parse(obj)
    return from_data(obj)


SELECTION_WORDS = ("all", "touchstone")


def selection_record(sel):
    """How a signature selection is recorded in a store's attributes.

    ``"all"``/``"touchstone"`` stay words; an expression (text or :class:`Expr`) becomes
    its :meth:`Expr.to_data`; anything else (a boolean mask) is ``"mask"``.
    """
    if sel is None:
        return "all"
    if isinstance(sel, str) and sel in SELECTION_WORDS:
        return sel
    if isinstance(sel, (str, Expr)):
        return as_expr(sel).to_data()
    return "mask"


def selection_from_record(rec):
    """The selection a store recorded: a word, an :class:`Expr`, or ``None`` for a mask.

    Text that is not a word (stores made before expressions were recorded as data) is
    parsed with :func:`parse`, never evaluated.
    """
    if rec is None or rec == "mask":
        return None
    if isinstance(rec, str) and rec in SELECTION_WORDS:
        return rec
    return as_expr(rec)


def selection_text(sel) -> str:
    """A signature selection as one line of text, for provenance that is only read."""
    if sel is None:
        return "all"
    if isinstance(sel, str) and sel in SELECTION_WORDS:
        return sel
    if isinstance(sel, (str, Expr)):
        return str(as_expr(sel))
    return "mask"
