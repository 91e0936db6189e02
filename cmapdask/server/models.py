"""Typed requests and responses of the REST API: the OpenAPI schema is the contract."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cmapdask.connectivity.validation import MAX_GENES, MIN_GENES

__all__ = [
    "MAX_GENES_PER_LIST",
    "MAX_QUERIES",
    "QueryIn",
    "QueryRequest",
    "GeneCheckIn",
    "GeneCheck",
    "JobStatus",
    "Page",
    "ErrorOut",
]

MAX_QUERIES = 25  # queries per job
MAX_GENES_PER_LIST = 1000  # hard limit; CLUE's 10-150 unless allow_any_size
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_ .-]{0,62}[A-Za-z0-9_.-])?")
NAME_RULE = (
    "a query name is 1-64 letters, digits, spaces and _ . -, starting with a letter or "
    "digit and not ending in a space"
)
_GENE = r"^[^\s,;\t]{1,64}$"

Space = Literal["landmark", "bing", "all"]
Gene = Field(pattern=_GENE)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QueryIn(_Strict):
    """One query: up and/or down genes as Entrez ids or gene symbols."""

    name: str = Field("query", description=NAME_RULE)
    up: list[str] | None = Field(
        None, max_length=MAX_GENES_PER_LIST, description="up-regulated genes"
    )
    down: list[str] | None = Field(
        None, max_length=MAX_GENES_PER_LIST, description="down-regulated genes"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if not _NAME.fullmatch(v):
            raise ValueError(f"{v[:40]!r}: {NAME_RULE}")
        return v

    @field_validator("up", "down")
    @classmethod
    def _genes(cls, v):
        if v is None:
            return v
        bad = [g for g in v if not re.match(_GENE, g)]
        if bad:
            raise ValueError(f"gene {bad[0][:40]!r} is not an id or symbol")
        return v


class QueryRequest(_Strict):
    """A query job: one or more queries and the options of ``cmapdask query``."""

    queries: list[QueryIn] = Field(min_length=1, max_length=MAX_QUERIES)
    space: Space | None = Field(None, description="feature space (default: the server's)")
    reference: Literal["all", "touchstone"] = "all"
    scored: str = Field(
        "all",
        min_length=1,
        max_length=2000,
        description="signatures scored: all, touchstone (as CLUE) or a signature filter "
        "such as \"cell_id in ('MCF7', 'PC3')\" (as `cmapdask query --scored`)",
    )
    tau: Literal["binned", "exact", "none"] = "binned"
    metric: Literal["wtcs", "cs"] = "wtcs"
    tail: Literal["both", "up", "down"] = "both"
    fdr: Literal["auto", "null", "none"] = "auto"
    allow_any_size: bool = Field(
        False,
        description=f"run lists outside CLUE's {MIN_GENES}-{MAX_GENES} genes (refused by default)",
    )


class GeneCheckIn(_Strict):
    """Gene lists to check against a feature space before submitting."""

    up: list[str] = Field(default_factory=list, max_length=MAX_GENES_PER_LIST)
    down: list[str] = Field(default_factory=list, max_length=MAX_GENES_PER_LIST)
    space: Space | None = None
    allow_any_size: bool = False


class GeneRow(BaseModel):
    given: str
    gene_id: str | None = Field(description="the store's gene id it matched, if any")
    symbol: str | None
    status: Literal["unknown", "in_space", "outside", "duplicate"] = Field(
        description="unknown; in the space (scored); measured but outside the space; given before"
    )
    space: str


class SideCheck(BaseModel):
    used: list[str] = Field(description="gene ids of the space, in input order")
    unknown: list[str] = Field(description="neither an id nor a symbol of the store")
    outside: list[str] = Field(description="genes of the store outside the space")
    duplicates: list[str]
    genes: list[GeneRow] = Field(description="every given gene, in input order")


class GeneCheck(BaseModel):
    space: str
    up: SideCheck
    down: SideCheck
    overlap: list[str] = Field(description="gene ids in both lists")
    messages: list[str] = Field(description="warnings and errors, one line each")
    ok: bool = Field(description="true when the lists can be submitted")


class JobStatus(BaseModel):
    id: str
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    download_status: Literal["pending", "writing", "done", "failed"] = Field(
        "pending", description="CLUE's folder and its archive (written after status done)"
    )
    stage: str
    progress: float
    created: float
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    warnings: list[str]
    queries: list[str]
    genes: list[dict[str, Any]]
    matrices: list[str]
    links: dict[str, str]


class Page(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[dict[str, Any]]


class ErrorOut(BaseModel):
    detail: str
