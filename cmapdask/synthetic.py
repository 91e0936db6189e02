"""Release-shaped synthetic data with planted, documented structure.

What it looks like
------------------
The files of a public CMap release (ALGORITHMS.md §11, 2020 column names): a Level-5
matrix of z-score-like float32 values with ids only, and the tables a user joins to it:
``siginfo`` (one row per signature), ``geneinfo`` (one row per gene), ``compoundinfo``
(one row per perturbagen, with ``moa`` and ``target``), and a PCL GMT (one set of
``pert_id`` per mechanism of action, named ``CP_<MOA>``).

Genes: the first 978 are the real landmark Entrez ids (package data, in the order of
``landmark_gene_ids_n978.grp``), then 9,196 synthetic "best inferred" and 2,154 synthetic
"inferred" Entrez-like ids. ``genes="bing"`` is the first 10,174, ``"all"`` all 12,328,
and every gene's values do not depend on the gene space chosen (the landmark columns of
an ``"all"`` matrix equal a ``"landmark"`` matrix of the same seed).

Experimental design
-------------------
Signatures come in *plate sets* of :data:`TILE` = 384 wells (the unit of randomness: any
block of signatures regenerates the plate sets it overlaps, so values never depend on the
dask chunking). Plate set ``t`` belongs to group ``g = t // n_replicates``; the plate sets
of a group are replicates of one another: same cell line (``cell_iname``), same time
(6 h or 24 h, p = 0.25 / 0.75), same compound plate map ``m = g % n_maps``, other noise.
Wells ``w % 16 == 0`` (24 per plate set) are vehicle controls (``pert_id`` ``DMSO``,
``pert_type`` ``ctl_vehicle``, dose fields missing). The other 360 wells hold 60 compound
slots x 6 doses (0.04 ... 10 µM); slot ``k`` of map ``m`` holds compound
``(60 m + k) % n_compounds``. Compound ``c`` has MoA ``c % n_moas`` (every MoA has
compounds, and any plate map holds every MoA when ``n_moas <= 60``). Ids:
``sig_id = SYN<t, 6 digits>_<cell>_<time>H:<well>`` (``rna_plate`` is the part before
``:``), ``pert_id = SYN-K<c, 8 digits>``, MoA ``a`` is ``SYN<a, 3 digits> inhibitor``
(or ``agonist``, ``antagonist``) with target ``SYNT<a>``.

Values (per signature, per gene; clipped to [-10, 10])
------------------------------------------------------
::

    x = eps + gamma * w[cell] + s * (r[cell, moa] * u[moa] + beta * v[compound])

- ``eps ~ N(0, 1)``: replicate noise, independent per signature and gene;
- ``w[cell]``: cell-line effect, dense N(0, 1) per gene, ``gamma`` = 0.3 (vehicles too);
- ``u[moa]``: the MoA's latent response direction, N(0, 1) on a random 10 % of the genes
  (of each gene segment), 0 elsewhere, shared by every compound of that MoA;
- ``v[compound]``: compound-specific component, N(0, 1) on 5 % of the genes,
  ``beta`` = 0.5;
- ``r[cell, moa] ~ U(0.5, 1.25)``: how strongly a cell line responds to a MoA;
- ``s = potency[compound] * dose / (dose + 1 µM) * (0.75 if 6 h else 1.0)``, with
  ``potency = 3 * exp(N(0, 0.25))``: a Hill dose response and a weaker early time point;
- vehicle controls have ``s = 0``: no MoA or compound effect.

So at 3.33-10 µM two signatures of different compounds of one MoA correlate at about
0.25-0.3 over the landmarks (also across cell lines), signatures of different MoAs at
about 0 (plus about 0.08 from the cell-line term when they share a cell line), and
signatures of one compound more than either (tests/test_synthetic.py checks this).
:func:`synth_truth` gives the ground truth per signature (``moa``, strength ``s * r``) and
:func:`synth_moa_directions` the directions ``u``.

Genetic perturbagens (``genetic=True``; ``cmapdask synth``'s default)
---------------------------------------------------------------------
Every group ``g % 4 == 1`` is a genetic plate set instead of a compound one (compound
plate maps go on in order over the other groups). Its 24 control wells are empty
vectors (``pert_id`` ``EMPTY_VECTOR``, ``pert_type`` ``ctl_vector``, ``is_null_sig``);
the 360 others hold 120 gene slots x 3 classes in well order: shRNA consensus
(``trt_sh.cgs``, ``pert_id`` ``CGS001-<gene_id>``), CRISPR (``trt_xpr``, ``XPR001-``) and
overexpression (``trt_oe``, ``OE001-``); slot ``k`` of genetic map ``m`` (``m`` = the
genetic group's ordinal modulo the number of maps) holds gene ``(120 m + k) %
n_genetic_genes``. ``cmap_name`` is the gene symbol, dose fields are missing and the time
is 96 h; the exemplar (first replicate) signatures of the first three genetic groups
of each genetic map are Touchstone, as CLUE's Touchstone holds knockdowns and
overexpressions in a few core cell lines (so the τ reference, an all-by-all introspect,
stays small in large releases). The genes are landmark genes drawn
by the seed; gene ``i < n_moas`` is the target of MoA ``i``, named in compoundinfo's
``target`` (``G<gene_id>``, the synthetic gene symbol), the others are decoys. Values::

    x = eps + gamma * w[cell] + g * (d[gene] + beta * sign(g) * o[gene, class])

- ``d[gene]``: the MoA's direction ``u`` for a target, a private sparse direction (10 %
  of the genes) for a decoy; ``o``: a reagent-specific off-target component (5 %);
- ``g = genetic_strength * c[class] * q[cell, gene] * sign``, ``c`` = 2.5 (shRNA), 3.0
  (CRISPR), 2.5 (overexpression), ``q[cell, gene] ~ U(0.25, 1.25)`` (cell-line-dependent
  strength), ``sign`` = +1 for the loss of function (shRNA, CRISPR) of the target of an
  inhibitor or antagonist or of a decoy, -1 for an agonist's target; overexpression has
  the opposite sign. So the knockdown of gene X looks like inhibitors of X, and its
  overexpression like agonists of X. :func:`synth_genetic_truth` has the genes, their
  MoA, sign and sensitivities; :func:`synth_geneticinfo` the perturbagen table
  (``pert_id``, ``cmap_name``, ``pert_type``, ``gene_id``).

``genetic=False`` (the default of :func:`synth_design`) gives the compound-only release
of earlier versions byte for byte.

Table fields that are derived, not random
-----------------------------------------
- ``ss_ngene``: landmarks with ``|x| >= 2`` in the signature (consistent with the matrix);
- ``cc_q75``: the replicate correlation a consensus of Level-4 replicates with noise s.d.
  1.5 would show, ``var(signal) / (var(signal) + 2.25)`` over landmarks, plus N(0, 0.05);
- ``tas``: ALGORITHMS.md §9 from those two;
- ``is_exemplar_sig`` = ``is_ncs_sig``: the first well of each (pert_id, dose) on the first
  plate set of its group; ``is_null_sig``: vehicle controls;
- ``is_touchstone``: exemplar 10 µM signatures of Touchstone compounds (the first compound
  of every MoA, ``c < n_moas``, and a random 25 % of the others), and exemplar genetic
  signatures of the first three passes over each genetic map.
- 2020 names: ``cell_iname`` (``cell_id`` before 2020), ``cmap_name`` (``pert_iname``).

Everything is a function of the seed and the design: the same seed gives the same bytes,
and generating ``n`` signatures gives the first ``n`` of a longer run with the same
``n_compounds`` and ``n_moas`` (their defaults grow with ``n_sigs``).
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Literal

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from dask.base import tokenize

from cmapdask.errors import InputError
from cmapdask.model.missing import is_missing
from cmapdask.model.provenance import provenance_record
from cmapdask.model.spaces import landmark_ids
from cmapdask.model.types import Space

__all__ = [
    "TILE",
    "SynthDesign",
    "synth_design",
    "landmark_gene_ids",
    "synth_gene_ids",
    "synth_geneinfo",
    "synth_compoundinfo",
    "synth_geneticinfo",
    "synth_genetic_truth",
    "synth_siginfo",
    "synth_pcl",
    "synth_truth",
    "synth_moa_directions",
    "synth_block",
    "iter_synth_blocks",
    "synth_expr",
    "synth_dataset",
    "write_synthetic",
    "pcl_name",
    "SIGINFO_COLUMNS",
    "GENEINFO_COLUMNS",
    "COMPOUNDINFO_COLUMNS",
    "GENETICINFO_COLUMNS",
    "GENETIC_TYPES",
]

GeneSpace = Space  # the option type, defined once in cmapdask.model.types

TILE = 384
SLOTS = 60  # compound slots per plate map: 60 x 6 doses + 24 vehicles = 384 wells
DOSES_UM = (0.04, 0.12, 0.37, 1.11, 3.33, 10.0)
TIMES_H = (6, 24)
TIME_P = (0.25, 0.75)
TIME_FACTOR = {6: 0.75, 24: 1.0, 96: 1.0}
EC50_UM = 1.0
POTENCY, POTENCY_LOG_SD = 3.0, 0.25
BETA, GAMMA = 0.5, 0.3
MOA_SUPPORT, COMPOUND_SUPPORT = 0.10, 0.05
SENSITIVITY = (0.5, 1.25)
REPLICATE_SD = 1.5
CLIP = 10.0
TOUCHSTONE_P = 0.25
# Public cell line names; the first nine are the Touchstone core lines.
CELL_LINES = (
    "MCF7",
    "PC3",
    "A549",
    "A375",
    "HA1E",
    "HCC515",
    "HEPG2",
    "HT29",
    "VCAP",
    "NPC",
    "ASC",
    "HUVEC",
    "YAPC",
    "MCF10A",
    "SKL",
    "PHH",
)
SEGMENTS = (("landmark", 978), ("best inferred", 9196), ("inferred", 2154))
N_SEGMENTS = {"landmark": 1, "bing": 2, "all": 3}
VEHICLE = "DMSO"
_ROWS = "ABCDEFGHIJKLMNOP"
# SeedSequence stream tags: each kind of randomness has its own stream.
_NOISE, _SIG, _GROUP, _COMPOUND, _MOA, _CELL, _TABLE, _SENS = range(8)
_GENE_PICK, _PATHWAY, _REAGENT, _GENE_SENS = range(8, 12)

# Genetic perturbagens (``genetic=True``): classes in well order, their pert_id prefixes
# and planted strengths; a knockdown or knockout (loss of function) mimics an inhibitor or
# antagonist of the gene and opposes an agonist, an overexpression the reverse.
GENETIC_TYPES = ("trt_sh.cgs", "trt_xpr", "trt_oe")
GENETIC_PREFIX = {"trt_sh.cgs": "CGS001", "trt_xpr": "XPR001", "trt_oe": "OE001"}
GENETIC_STRENGTH = (2.5, 3.0, 2.5)
GENETIC_LOF = (True, True, False)
GENETIC_SENSITIVITY = (0.25, 1.25)
GENETIC_PERIOD = 4  # groups g with g % 4 == 1 are genetic plate sets
GENETIC_TIME = 96
GENE_SLOTS = 120  # genes per genetic plate map: 120 x 3 classes + 24 controls = 384 wells
GENETIC_TOUCHSTONE = 3  # the first 3 passes over each genetic map are Touchstone
VECTOR = "EMPTY_VECTOR"
GENETICINFO_COLUMNS = ("pert_id", "cmap_name", "pert_type", "gene_id")

SIGINFO_COLUMNS = (
    "sig_id",
    "pert_id",
    "cmap_name",
    "pert_type",
    "cell_iname",
    "pert_idose",
    "pert_dose",
    "pert_dose_unit",
    "pert_itime",
    "pert_time",
    "pert_time_unit",
    "rna_plate",
    "det_plate",
    "bead_batch",
    "nsample",
    "tas",
    "cc_q75",
    "ss_ngene",
    "is_exemplar_sig",
    "is_touchstone",
    "is_ncs_sig",
    "is_null_sig",
)
GENEINFO_COLUMNS = (
    "gene_id",
    "gene_symbol",
    "ensembl_id",
    "gene_title",
    "gene_type",
    "src",
    "feature_space",
)
COMPOUNDINFO_COLUMNS = (
    "pert_id",
    "cmap_name",
    "target",
    "moa",
    "canonical_smiles",
    "inchi_key",
    "compound_aliases",
)


# ----------------------------------------------------------------------------- the design


@dataclass(frozen=True)
class SynthDesign:
    """Everything that determines a synthetic data set (build it with :func:`synth_design`)."""

    n_sigs: int
    genes: GeneSpace
    seed: int
    n_moas: int
    n_compounds: int
    n_cells: int
    n_replicates: int
    genetic: bool = False
    n_genetic_genes: int = 0
    genetic_strength: float = 1.0

    @property
    def n_genes(self) -> int:
        return sum(n for _, n in SEGMENTS[: N_SEGMENTS[self.genes]])

    @property
    def n_tiles(self) -> int:
        return -(-self.n_sigs // TILE)

    @property
    def n_maps(self) -> int:
        return -(-self.n_compounds // SLOTS)

    @property
    def n_gene_maps(self) -> int:
        return -(-self.n_genetic_genes // GENE_SLOTS) if self.genetic else 0

    def is_genetic_group(self, g: int) -> bool:
        """Whether plate-set group ``g`` holds genetic perturbagens."""
        return self.genetic and g % GENETIC_PERIOD == 1

    def compound_group(self, g: int) -> int:
        """Ordinal of group ``g`` among the compound groups (``g`` without genetics)."""
        if not self.genetic:
            return g
        return g - (g + GENETIC_PERIOD - 2) // GENETIC_PERIOD


def synth_design(
    n_sigs: int,
    *,
    genes: GeneSpace = "landmark",
    seed: int = 0,
    n_moas: int | None = None,
    n_compounds: int | None = None,
    n_cells: int = 9,
    n_replicates: int = 3,
    genetic: bool = False,
    n_genetic_genes: int | None = None,
    genetic_strength: float = 1.0,
) -> SynthDesign:
    """Validate the parameters of a synthetic data set and fill in the defaults.

    Parameters
    ----------
    n_sigs
        Number of signatures (>= 1).
    genes
        ``"landmark"``: the 978 measured genes; ``"bing"``: 10,174 (landmarks and best
        inferred); ``"all"``: 12,328.
    seed
        Non-negative integer; the whole data set is a function of it and the design.
    n_moas
        Mechanisms of action. Default ``clip(n_sigs // 5000, 4, 171)`` (CLUE has 171 PCLs).
    n_compounds
        Compounds (``trt_cp``). Default ``max(2 * n_moas, min(n_sigs // 40, 30000))``.
    n_cells
        Cell lines, 1 to 16 (the first 9 are the Touchstone core lines).
    n_replicates
        Plate sets per group: how often each condition is repeated with fresh noise.
    genetic
        Also genetic perturbagens (shRNA consensus ``trt_sh.cgs``, CRISPR ``trt_xpr``,
        overexpression ``trt_oe``) on every group ``g % 4 == 1``, with the MoAs' targets
        among their genes. Off by default here so that existing designs keep their bytes;
        ``cmapdask synth`` turns it on.
    n_genetic_genes
        Genes with genetic perturbagens (``genetic`` only): the ``n_moas`` targets first,
        then decoys. Default ``min(978, max(120, 2 * n_moas))``; landmark genes.
    genetic_strength
        Scale of the planted genetic effects (0: knockdowns carry no signal).

    Examples
    --------
    >>> d = synth_design(1000, seed=1)
    >>> d.n_genes, d.n_moas, d.n_compounds
    (978, 4, 25)
    """
    for name, value in (
        ("n_sigs", n_sigs),
        ("seed", seed),
        ("n_cells", n_cells),
        ("n_replicates", n_replicates),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InputError(f"synthetic: {name} must be an integer, got {value!r}")
    if n_sigs < 1:
        raise InputError(f"synthetic: n_sigs must be at least 1, got {n_sigs}")
    if seed < 0:
        raise InputError(f"synthetic: seed must be non-negative, got {seed}")
    if genes not in N_SEGMENTS:
        raise InputError(f"synthetic: genes must be one of landmark, bing, all; got {genes!r}")
    if not 1 <= n_cells <= len(CELL_LINES):
        raise InputError(
            f"synthetic: n_cells must be between 1 and {len(CELL_LINES)}, got {n_cells}"
        )
    if n_replicates < 1:
        raise InputError(f"synthetic: n_replicates must be at least 1, got {n_replicates}")
    n_moas = int(np.clip(n_sigs // 5000, 4, 171)) if n_moas is None else n_moas
    if n_compounds is None:
        n_compounds = max(2 * n_moas, min(n_sigs // 40, 30000))
    if n_moas < 1 or n_compounds < n_moas:
        raise InputError(
            f"synthetic: need 1 <= n_moas <= n_compounds, got n_moas={n_moas}, "
            f"n_compounds={n_compounds}"
        )
    if n_genetic_genes is None:
        n_genetic_genes = min(978, max(GENE_SLOTS, 2 * n_moas)) if genetic else 0
    if genetic and not n_moas <= n_genetic_genes <= 978:
        raise InputError(
            f"synthetic: n_genetic_genes must be between n_moas ({n_moas}) and 978, "
            f"got {n_genetic_genes}"
        )
    if not np.isfinite(genetic_strength) or genetic_strength < 0:
        raise InputError(
            f"synthetic: genetic_strength must be a non-negative number, got {genetic_strength}"
        )
    return SynthDesign(
        int(n_sigs),
        genes,
        int(seed),
        int(n_moas),
        int(n_compounds),
        int(n_cells),
        int(n_replicates),
        bool(genetic),
        int(n_genetic_genes) if genetic else 0,
        float(genetic_strength),
    )


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


# ----------------------------------------------------------------------------- genes


@functools.cache
def landmark_gene_ids() -> tuple[str, ...]:
    """The 978 landmark Entrez ids (as ``str``), in the order of the Broad's GRP file."""
    return landmark_ids()


@functools.cache
def _all_gene_ids() -> tuple[str, ...]:
    # Entrez-like, unique, and fixed for every seed: strictly increasing because the
    # wobble (k*k mod 7) is smaller than the step 9; landmark ids are skipped.
    landmarks = landmark_gene_ids()
    taken = {int(g) for g in landmarks}
    n_more = sum(n for _, n in SEGMENTS[1:])
    k = np.arange(2 * n_more, dtype=np.int64)
    candidates = 10000 + 9 * k + (k * k) % 7
    inferred = [int(c) for c in candidates if int(c) not in taken][:n_more]
    return landmarks + tuple(str(c) for c in inferred)


def synth_gene_ids(genes: GeneSpace = "landmark") -> np.ndarray:
    """Gene ids of a gene space (object array of ``str``): landmarks first, then inferred."""
    if genes not in N_SEGMENTS:
        raise InputError(f"synthetic: genes must be one of landmark, bing, all; got {genes!r}")
    n = sum(n for _, n in SEGMENTS[: N_SEGMENTS[genes]])
    return np.array(_all_gene_ids()[:n], dtype=object)


def synth_geneinfo(design: SynthDesign) -> pd.DataFrame:
    """``geneinfo`` table of the design's gene space (columns :data:`GENEINFO_COLUMNS`).

    Symbols are synthetic (``G<id>``) and ``ensembl_id`` is missing: only the landmark
    Entrez ids are real.
    """
    ids = synth_gene_ids(design.genes)
    space = np.concatenate([[name] * n for name, n in SEGMENTS[: N_SEGMENTS[design.genes]]]).astype(
        object
    )
    return pd.DataFrame(
        {
            "gene_id": ids.astype(np.int64),
            "gene_symbol": [f"G{g}" for g in ids],
            "ensembl_id": [None] * len(ids),
            "gene_title": [f"synthetic gene {g}" for g in ids],
            "gene_type": "protein-coding",
            "src": "cmapdask-synthetic",
            "feature_space": space,
        },
        columns=list(GENEINFO_COLUMNS),
    )


# ----------------------------------------------------------------------------- compounds


def _moa_name(a: int) -> str:
    return f"SYN{a:03d} " + ("inhibitor", "agonist", "antagonist")[a % 3]


def _pert_id(c: int) -> str:
    return f"SYN-K{c:08d}"


@functools.lru_cache(maxsize=8)
def _compound_table(seed: int, n_compounds: int, n_moas: int) -> tuple[np.ndarray, np.ndarray]:
    """(potency, is_touchstone compound) per compound."""
    rng = _rng(seed, _TABLE)
    potency = POTENCY * np.exp(rng.normal(0.0, POTENCY_LOG_SD, n_compounds))
    touch = rng.random(n_compounds) < TOUCHSTONE_P
    touch[:n_moas] = True  # every MoA has a Touchstone compound
    return potency, touch


@functools.lru_cache(maxsize=8)
def _genetic_genes(seed: int, n: int) -> np.ndarray:
    """Landmark positions of the genes with genetic perturbagens (the first ``n_moas``
    are the MoAs' targets, in MoA order)."""
    return _rng(seed, _GENE_PICK).permutation(978)[:n]


def _target_symbol(design: SynthDesign, a: int) -> str:
    if not design.genetic:
        return f"SYNT{a:03d}"
    return f"G{landmark_gene_ids()[_genetic_genes(design.seed, design.n_genetic_genes)[a]]}"


def _genetic_pert_id(k: int, gene_id: str) -> str:
    return f"{GENETIC_PREFIX[GENETIC_TYPES[k]]}-{gene_id}"


def _is_agonist(a: int) -> bool:
    return a % 3 == 1


def synth_geneticinfo(design: SynthDesign) -> pd.DataFrame:
    """``geneticinfo``: one row per genetic perturbagen (empty without ``genetic``).

    Columns :data:`GENETICINFO_COLUMNS`: ``pert_id`` (``CGS001-<gene_id>`` for shRNA
    consensus, ``XPR001-`` CRISPR, ``OE001-`` overexpression), ``cmap_name`` (the gene
    symbol, as in siginfo), ``pert_type`` and the target ``gene_id``; genes in the order
    of :func:`synth_genetic_truth`, classes in the order of :data:`GENETIC_TYPES`.
    """
    rows = []
    lm = landmark_gene_ids()
    for i in _genetic_genes(design.seed, design.n_genetic_genes).tolist():
        for k, pt in enumerate(GENETIC_TYPES):
            rows.append((_genetic_pert_id(k, lm[i]), f"G{lm[i]}", pt, int(lm[i])))
    return pd.DataFrame(rows, columns=list(GENETICINFO_COLUMNS)).astype(
        {"pert_id": object, "cmap_name": object, "pert_type": object, "gene_id": np.int64}
    )


def synth_genetic_truth(design: SynthDesign) -> pd.DataFrame:
    """Planted truth of the genes with genetic perturbagens, one row per gene.

    Columns: ``gene_id`` (str), ``gene_symbol``, ``moa_index`` (the MoA whose target the
    gene is, -1 for a decoy), ``moa``, ``lof_sign`` (+1: a knockdown or knockout mimics
    the MoA's compounds, -1: it opposes them (agonists); an overexpression has the
    opposite sign) and ``sensitivity_<cell>`` (the cell line's strength factor).
    """
    lm = landmark_gene_ids()
    genes = _genetic_genes(design.seed, design.n_genetic_genes)
    idx = np.arange(genes.size)
    moa = np.where(idx < design.n_moas, idx, -1)
    df = pd.DataFrame(
        {
            "gene_id": np.array([lm[i] for i in genes.tolist()], dtype=object),
            "gene_symbol": np.array([f"G{lm[i]}" for i in genes.tolist()], dtype=object),
            "moa_index": moa.astype(np.int64),
            "moa": np.array([_moa_name(a) if a >= 0 else None for a in moa], dtype=object),
            "lof_sign": np.array(
                [-1 if a >= 0 and _is_agonist(a) else 1 for a in moa], dtype=np.int64
            ),
        }
    )
    sens = _gene_sensitivity(design.seed, design.n_cells, design.n_genetic_genes)
    for c in range(design.n_cells):
        df[f"sensitivity_{CELL_LINES[c]}"] = sens[c]
    return df


def synth_compoundinfo(design: SynthDesign) -> pd.DataFrame:
    """``compoundinfo``: one row per compound plus the vehicle ``DMSO``.

    Columns :data:`COMPOUNDINFO_COLUMNS`; one MoA and one target per compound; structure
    fields are missing for synthetic compounds (DMSO has its real SMILES / InChIKey).
    """
    c = np.arange(design.n_compounds)
    a = c % design.n_moas
    df = pd.DataFrame(
        {
            "pert_id": [_pert_id(i) for i in c],
            "cmap_name": [f"synth-{i:05d}" for i in c],
            "target": [_target_symbol(design, i) for i in a],
            "moa": [_moa_name(i) for i in a],
            "canonical_smiles": None,
            "inchi_key": None,
            "compound_aliases": None,
        },
        columns=list(COMPOUNDINFO_COLUMNS),
    )
    vehicle = pd.DataFrame(
        [
            {
                "pert_id": VEHICLE,
                "cmap_name": VEHICLE,
                "target": None,
                "moa": None,
                "canonical_smiles": "CS(C)=O",
                "inchi_key": "IAZDPXIOMUYVGZ-UHFFFAOYSA-N",
                "compound_aliases": "dimethyl sulfoxide",
            }
        ],
        columns=list(COMPOUNDINFO_COLUMNS),
    )
    return pd.concat([df, vehicle], ignore_index=True).astype(object)


def pcl_name(moa: str) -> str:
    """``CP_<MOA>``: upper case, runs of other characters as ``_``."""
    return "CP_" + re.sub(r"[^A-Z0-9]+", "_", moa.upper()).strip("_")


def synth_pcl(design: SynthDesign) -> dict[str, tuple[str, list[str]]]:
    """PCLs: ``{name: (description, pert_ids)}``, one per MoA, named ``CP_<MOA>``."""
    out = {}
    for a in range(design.n_moas):
        members = [_pert_id(c) for c in range(a, design.n_compounds, design.n_moas)]
        out[pcl_name(_moa_name(a))] = (_moa_name(a), members)
    return out


# ----------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class _Tile:
    """Who is in plate set ``t``: per-well arrays (length <= TILE) and plate-level fields."""

    t: int
    group: int
    rep: int
    cell: int
    time: int
    bead: int
    well: np.ndarray  # well index 0..383
    compound: np.ndarray  # -1 for the vehicle
    dose: np.ndarray  # index into DOSES_UM, -1 for the vehicle
    exemplar: np.ndarray  # bool
    # genetic plate sets only (else all -1): index into the genetic genes, and class
    gene: np.ndarray
    gclass: np.ndarray

    @property
    def genetic(self) -> bool:
        return bool(self.gene.size) and bool((self.gene >= 0).any())

    @property
    def control(self) -> np.ndarray:
        """Vehicle (compound plates) or empty-vector (genetic plates) wells."""
        return (self.compound < 0) & (self.gene < 0)


@functools.lru_cache(maxsize=64)
def _tile(design: SynthDesign, t: int, *, full: bool = False) -> _Tile:
    """Layout of plate set ``t``; ``full``: all 384 wells even past ``n_sigs``."""
    well = np.arange(TILE if full else min(TILE, design.n_sigs - t * TILE))
    g, rep = divmod(t, design.n_replicates)
    grng = _rng(design.seed, _GROUP, g)
    cell = int(grng.integers(design.n_cells))
    time = int(grng.choice(TIMES_H, p=TIME_P))
    bead = int(grng.integers(1, 40))
    vehicle = well % 16 == 0
    j = well - (well // 16) - 1  # ordinal among treatment wells
    none = np.full(len(well), -1, dtype=np.int64)
    if design.is_genetic_group(g):
        time = GENETIC_TIME
        slot, gclass = np.divmod(j, len(GENETIC_TYPES))
        m = (g // GENETIC_PERIOD) % design.n_gene_maps
        gene = np.where(vehicle, -1, (m * GENE_SLOTS + slot) % design.n_genetic_genes)
        gclass = np.where(vehicle, -1, gclass)
        compound, dose, key = none, none, np.where(vehicle, -1, gene * len(GENETIC_TYPES) + gclass)
    else:
        slot, dose = np.divmod(j, len(DOSES_UM))
        m = design.compound_group(g) % design.n_maps
        compound = np.where(vehicle, -1, (m * SLOTS + slot) % design.n_compounds)
        dose = np.where(vehicle, -1, dose)
        gene, gclass, key = none, none, compound
    _, first = np.unique(np.stack([key, dose]), axis=1, return_index=True)
    exemplar = np.zeros(len(well), bool)
    exemplar[first] = rep == 0
    return _Tile(t, g, rep, cell, time, bead, well, compound, dose, exemplar, gene, gclass)


def _tiles(design: SynthDesign, start: int, stop: int) -> range:
    return range(start // TILE, -(-stop // TILE)) if stop > start else range(0)


# ----------------------------------------------------------------------------- values


def _sparse(rng: np.random.Generator, n: int, frac: float) -> np.ndarray:
    out = np.zeros(n, np.float32)
    idx = rng.choice(n, size=max(1, round(frac * n)), replace=False)
    out[idx] = rng.standard_normal(len(idx), dtype=np.float32)
    return out


@functools.lru_cache(maxsize=16)
def _moa_dirs(seed: int, n_moas: int, seg: int) -> np.ndarray:
    n = SEGMENTS[seg][1]
    return np.stack([_sparse(_rng(seed, _MOA, a, seg), n, MOA_SUPPORT) for a in range(n_moas)])


@functools.lru_cache(maxsize=16)
def _cell_effects(seed: int, n_cells: int, seg: int) -> np.ndarray:
    n = SEGMENTS[seg][1]
    return np.stack(
        [_rng(seed, _CELL, c, seg).standard_normal(n, dtype=np.float32) for c in range(n_cells)]
    )


@functools.lru_cache(maxsize=8)
def _sensitivity(seed: int, n_cells: int, n_moas: int) -> np.ndarray:
    return _rng(seed, _SENS).uniform(*SENSITIVITY, (n_cells, n_moas))


@functools.lru_cache(maxsize=24)
def _map_dirs(seed: int, n_compounds: int, m: int, seg: int) -> np.ndarray:
    """Compound-specific directions of the 60 slots of plate map ``m`` (re-used by the
    ``n_replicates`` plate sets of a group, hence cached)."""
    n = SEGMENTS[seg][1]
    cs = (m * SLOTS + np.arange(SLOTS)) % n_compounds
    return np.stack([_sparse(_rng(seed, _COMPOUND, int(c), seg), n, COMPOUND_SUPPORT) for c in cs])


@functools.lru_cache(maxsize=16)
def _pathway_dirs(seed: int, n_moas: int, n_genetic: int, seg: int) -> np.ndarray:
    """Direction planted by the loss of each genetic gene: its MoA's ``u`` for a target,
    a private sparse direction (same support as a MoA) for a decoy."""
    n = SEGMENTS[seg][1]
    u = _moa_dirs(seed, n_moas, seg)
    decoys = [
        _sparse(_rng(seed, _PATHWAY, i, seg), n, MOA_SUPPORT) for i in range(n_moas, n_genetic)
    ]
    return np.concatenate([u[:n_genetic], np.stack(decoys)]) if decoys else u[:n_genetic].copy()


@functools.lru_cache(maxsize=8)
def _gene_sensitivity(seed: int, n_cells: int, n_genetic: int) -> np.ndarray:
    return _rng(seed, _GENE_SENS).uniform(*GENETIC_SENSITIVITY, (n_cells, n_genetic))


@functools.lru_cache(maxsize=24)
def _reagent_dirs(seed: int, n_genetic: int, m: int, seg: int) -> np.ndarray:
    """Reagent-specific (off-target) directions of the 360 wells of genetic map ``m``."""
    n = SEGMENTS[seg][1]
    j = np.arange(SLOTS * len(DOSES_UM))
    slot, k = np.divmod(j, len(GENETIC_TYPES))
    gene = (m * GENE_SLOTS + slot) % n_genetic
    return np.stack(
        [
            _sparse(_rng(seed, _REAGENT, int(i), int(c), seg), n, COMPOUND_SUPPORT)
            for i, c in zip(gene.tolist(), k.tolist(), strict=True)
        ]
    )


def _genetic_strength(design: SynthDesign, tile: _Tile) -> np.ndarray:
    """Signed strength of the planted pathway direction per well (0: not genetic):
    ``genetic_strength * class strength * sensitivity[cell, gene] * sign``."""
    out = np.zeros(len(tile.well))
    on = np.flatnonzero(tile.gene >= 0)
    if not on.size:
        return out
    gene, k = tile.gene[on], tile.gclass[on]
    sens = _gene_sensitivity(design.seed, design.n_cells, design.n_genetic_genes)[tile.cell, gene]
    lof = np.asarray(GENETIC_LOF)[k]
    agonist = (gene < design.n_moas) & (gene % 3 == 1)
    sign = np.where(lof != agonist, 1.0, -1.0)
    out[on] = design.genetic_strength * np.asarray(GENETIC_STRENGTH)[k] * sens * sign
    return out


def _strength(design: SynthDesign, tile: _Tile) -> np.ndarray:
    """MoA strength ``s * r[cell, moa]`` and compound strength ``s`` per well (0: vehicle)."""
    potency, _ = _compound_table(design.seed, design.n_compounds, design.n_moas)
    treated = tile.compound >= 0
    dose = np.asarray(DOSES_UM)[np.maximum(tile.dose, 0)]
    s = np.where(treated, potency[np.maximum(tile.compound, 0)], 0.0)
    s = s * dose / (dose + EC50_UM) * TIME_FACTOR[tile.time]
    r = _sensitivity(design.seed, design.n_cells, design.n_moas)[
        tile.cell, np.maximum(tile.compound, 0) % design.n_moas
    ]
    return s * r, s


@functools.lru_cache(maxsize=8)
def _group_signal(design: SynthDesign, g: int, seg: int) -> np.ndarray:
    """Everything but the noise, for every well of group ``g``'s plate sets over gene
    segment ``seg`` (read-only, 384 x n). The plate sets of a group differ only in noise,
    so this is computed once per group (hence cached)."""
    tile = _tile(design, g * design.n_replicates, full=True)
    moa_s, cpd_s = _strength(design, tile)
    treated = np.flatnonzero(tile.compound >= 0)
    slot = (tile.well[treated] - tile.well[treated] // 16 - 1) // len(DOSES_UM)
    moa = tile.compound[treated] % design.n_moas
    signal = np.empty((TILE, SEGMENTS[seg][1]), np.float32)
    signal[:] = GAMMA * _cell_effects(design.seed, design.n_cells, seg)[tile.cell]
    effect = (
        moa_s[treated, None].astype(np.float32) * _moa_dirs(design.seed, design.n_moas, seg)[moa]
    )
    effect += (BETA * cpd_s[treated, None]).astype(np.float32) * _map_dirs(
        design.seed, design.n_compounds, design.compound_group(tile.group) % design.n_maps, seg
    )[slot]
    signal[treated] += effect
    on = np.flatnonzero(tile.gene >= 0)
    if on.size:
        gs = _genetic_strength(design, tile)[on].astype(np.float32)
        n_gen = design.n_genetic_genes
        dirs = _pathway_dirs(design.seed, design.n_moas, n_gen, seg)[tile.gene[on]]
        m = (g // GENETIC_PERIOD) % design.n_gene_maps
        off = _reagent_dirs(design.seed, n_gen, m, seg)[tile.well[on] - tile.well[on] // 16 - 1]
        signal[on] += gs[:, None] * dirs + (BETA * np.abs(gs))[:, None] * off
    signal.setflags(write=False)
    return signal


def _tile_values(
    design: SynthDesign,
    tile: _Tile,
    segs: range,
    rows: tuple[int, int] | None = None,
    *,
    out: np.ndarray | None = None,
    with_signal: bool = False,
):
    """Values of rows ``lo:hi`` of one plate set over gene segments ``segs``, written into
    ``out`` when given: (values, landmark signal or None)."""
    lo, hi = rows or (0, len(tile.well))
    if out is None:
        out = np.empty((hi - lo, sum(SEGMENTS[g][1] for g in segs)), np.float32)
    signal, col = None, 0
    for seg in segs:
        n = SEGMENTS[seg][1]
        # Noise is drawn in row order from the plate set's own stream, so rows lo:hi are
        # the same whether the first hi rows or the whole plate set are drawn.
        rng = _rng(design.seed, _NOISE, tile.t, seg)
        if lo == 0 and len(segs) == 1:
            x = rng.standard_normal(dtype=np.float32, out=out)  # no copy: the common case
        else:
            x = rng.standard_normal((hi, n), dtype=np.float32)[lo:]
        x += _group_signal(design, tile.group, seg)[lo:hi]
        np.clip(x, -CLIP, CLIP, out=out[:, col : col + n])
        col += n
        if with_signal and seg == 0:
            signal = _group_signal(design, tile.group, seg)[lo:hi]
    return out, signal


def synth_block(design: SynthDesign, start: int, stop: int) -> np.ndarray:
    """Signatures ``start:stop`` as a float32 ``(stop - start, n_genes)`` numpy array.

    The array layer: regenerates only the plate sets overlapping the range, so any block
    is reproducible on its own and the result does not depend on how a range is split.

    Notes
    -----
    Holds the output plus at most one plate set of noise (384 x n_genes float32), the
    noise-free values of the last few plate-set groups (8 x 384 x segment genes, at most
    113 MB for ``"all"``, 12 MB for landmarks) and the direction tables of the MoAs
    (n_moas x n_genes), cell lines and a few plate maps (60 x n_genes each).
    """
    if not 0 <= start <= stop <= design.n_sigs:
        raise InputError(f"synthetic: block {start}:{stop} outside 0:{design.n_sigs}")
    out = np.empty((stop - start, design.n_genes), np.float32)
    segs = range(N_SEGMENTS[design.genes])
    for t in _tiles(design, start, stop):
        lo, hi = max(start, t * TILE), min(stop, (t + 1) * TILE)
        _tile_values(
            design,
            _tile(design, t),
            segs,
            (lo - t * TILE, hi - t * TILE),
            out=out[lo - start : hi - start],
        )
    return out


# ----------------------------------------------------------------------------- signatures


def _well_name(w: np.ndarray) -> list[str]:
    return [f"{_ROWS[i // 24]}{i % 24 + 1:02d}" for i in w.tolist()]


def _tile_meta(design: SynthDesign, tile: _Tile) -> dict[str, np.ndarray | list]:
    """siginfo fields that need no values (ids, perturbagen, dose, time, plates)."""
    cell = CELL_LINES[tile.cell]
    rna_plate = f"SYN{tile.t:06d}_{cell}_{tile.time}H"
    n = len(tile.well)
    treated = tile.compound >= 0
    dose = np.asarray(DOSES_UM)[np.maximum(tile.dose, 0)]
    if tile.genetic:
        lm = landmark_gene_ids()
        gid = _genetic_genes(design.seed, design.n_genetic_genes)
        ids = [lm[gid[i]] if i >= 0 else None for i in tile.gene.tolist()]
        k = tile.gclass.tolist()
        pert = np.array(
            [_genetic_pert_id(c, g) if g else VECTOR for c, g in zip(k, ids, strict=True)],
            dtype=object,
        )
        name = np.array([f"G{g}" if g else VECTOR for g in ids], dtype=object)
        ptype = np.array([GENETIC_TYPES[c] if c >= 0 else "ctl_vector" for c in k], dtype=object)
    else:
        pert = np.array(
            [_pert_id(c) if c >= 0 else VEHICLE for c in tile.compound.tolist()], dtype=object
        )
        name = np.array(
            [f"synth-{c:05d}" if c >= 0 else VEHICLE for c in tile.compound.tolist()], dtype=object
        )
        ptype = np.where(treated, "trt_cp", "ctl_vehicle").astype(object)
    return {
        "sig_id": [f"{rna_plate}:{w}" for w in _well_name(tile.well)],
        "pert_id": pert,
        "cmap_name": name,
        "pert_type": ptype,
        "cell_iname": np.full(n, cell, dtype=object),
        "pert_idose": np.array(
            [f"{d:g} uM" if ok else None for d, ok in zip(dose, treated, strict=False)],
            dtype=object,
        ),
        "pert_dose": np.where(treated, dose, np.nan),
        "pert_dose_unit": np.where(treated, "uM", None).astype(object),
        "pert_itime": np.full(n, f"{tile.time} h", dtype=object),
        "pert_time": np.full(n, tile.time, dtype=np.int64),
        "pert_time_unit": np.full(n, "h", dtype=object),
        "rna_plate": np.full(n, rna_plate, dtype=object),
        "bead_batch": np.full(n, f"b{tile.bead}", dtype=object),
    }


def synth_siginfo(design: SynthDesign, *, start: int = 0, stop: int | None = None) -> pd.DataFrame:
    """``siginfo`` rows of signatures ``start:stop`` (columns :data:`SIGINFO_COLUMNS`).

    Numbers stay numbers; missing values (dose fields of vehicle controls) are ``None``
    or NaN, written as ``-666`` by :func:`write_synthetic`.

    Notes
    -----
    Regenerates the landmark values of the plate sets in the range (``ss_ngene``,
    ``cc_q75`` and ``tas`` are derived from them); memory is the returned rows plus one
    plate set, about 1 KB per signature. For millions of signatures call it per range,
    as :func:`write_synthetic` does.
    """
    stop = design.n_sigs if stop is None else stop
    if not 0 <= start <= stop <= design.n_sigs:
        raise InputError(f"synthetic: rows {start}:{stop} outside 0:{design.n_sigs}")
    _, touch = _compound_table(design.seed, design.n_compounds, design.n_moas)
    parts = []
    for t in _tiles(design, start, stop):
        tile = _tile(design, t)
        meta = _tile_meta(design, tile)
        values, signal = _tile_values(design, tile, range(1), with_signal=True)
        srng = _rng(design.seed, _SIG, t)
        nsample = srng.integers(2, 5, TILE)[: len(tile.well)]
        cc_noise = srng.normal(0.0, 0.05, TILE)[: len(tile.well)]
        ss_ngene = (np.abs(values) >= 2).sum(axis=1).astype(np.int64)
        v = signal.astype(np.float64).var(axis=1)
        cc_q75 = np.round(np.clip(v / (v + REPLICATE_SD**2) + cc_noise, -1, 1), 4)
        tas = np.round(
            np.sqrt(np.maximum(ss_ngene, 0.001) * np.maximum(np.clip(cc_q75, 0, 1), 0.001) / 978), 4
        )
        treated = tile.compound >= 0
        meta["det_plate"] = np.array(
            [
                "|".join(f"{meta['rna_plate'][0]}_X{k}_B{tile.bead}" for k in range(1, n + 1))
                for n in nsample.tolist()
            ],
            dtype=object,
        )
        meta.update(
            nsample=nsample.astype(np.int64),
            tas=tas,
            cc_q75=cc_q75,
            ss_ngene=ss_ngene,
            is_exemplar_sig=tile.exemplar.astype(np.int64),
            is_touchstone=(
                (
                    tile.exemplar
                    & treated
                    & (tile.dose == len(DOSES_UM) - 1)
                    & touch[np.maximum(tile.compound, 0)]
                )
                | (
                    tile.exemplar
                    & (tile.gene >= 0)
                    & (tile.group // GENETIC_PERIOD < GENETIC_TOUCHSTONE * design.n_gene_maps)
                )
            ).astype(np.int64),
            is_ncs_sig=tile.exemplar.astype(np.int64),
            is_null_sig=tile.control.astype(np.int64),
        )
        lo, hi = max(start, t * TILE) - t * TILE, min(stop, (t + 1) * TILE) - t * TILE
        parts.append(pd.DataFrame({k: meta[k][lo:hi] for k in SIGINFO_COLUMNS}))
    if not parts:
        return pd.DataFrame({k: [] for k in SIGINFO_COLUMNS})
    return pd.concat(parts, ignore_index=True)


def _sig_ids(design: SynthDesign, start: int, stop: int) -> np.ndarray:
    ids = []
    for t in _tiles(design, start, stop):
        tile = _tile(design, t)
        plate = f"SYN{t:06d}_{CELL_LINES[tile.cell]}_{tile.time}H"
        lo, hi = max(start, t * TILE) - t * TILE, min(stop, (t + 1) * TILE) - t * TILE
        ids.extend(f"{plate}:{w}" for w in _well_name(tile.well[lo:hi]))
    return np.array(ids, dtype=object)


def synth_truth(design: SynthDesign) -> pd.DataFrame:
    """Planted ground truth, indexed by ``sig_id``.

    Columns: ``pert_id``, ``pert_type``, ``moa`` (``None`` for vehicles), ``moa_index``
    (-1 for vehicles), ``cell_iname``, ``pert_dose`` (NaN for vehicles), ``pert_time``,
    ``strength`` (``s * r[cell, moa]``, the weight of the MoA direction; 0 for vehicles),
    ``group`` (plate-set group: signatures of one condition and group are replicates).
    With ``genetic`` also ``gene_index`` (row of :func:`synth_genetic_truth`, -1 for
    other signatures) and ``gene_strength`` (the signed weight of the gene's pathway
    direction, which is its MoA's ``u`` for a target; 0 for other signatures). Genetic
    signatures have ``moa_index`` -1: their link to a MoA is in the gene table.

    Notes
    -----
    Needs no values: O(n_sigs) memory, about 0.5 KB per signature.
    """
    parts = []
    for t in range(design.n_tiles):
        tile = _tile(design, t)
        meta = _tile_meta(design, tile)
        moa_s, _ = _strength(design, tile)
        moa_i = np.where(tile.compound >= 0, tile.compound % design.n_moas, -1)
        extra = (
            {"gene_index": tile.gene, "gene_strength": _genetic_strength(design, tile)}
            if design.genetic
            else {}
        )
        parts.append(
            pd.DataFrame(
                {
                    "sig_id": meta["sig_id"],
                    "pert_id": meta["pert_id"],
                    "pert_type": meta["pert_type"],
                    "moa": np.array(
                        [_moa_name(a) if a >= 0 else None for a in moa_i.tolist()], dtype=object
                    ),
                    "moa_index": moa_i.astype(np.int64),
                    "cell_iname": meta["cell_iname"],
                    "pert_dose": meta["pert_dose"],
                    "pert_time": meta["pert_time"],
                    "strength": moa_s,
                    "group": np.full(len(tile.well), tile.group, np.int64),
                    **extra,
                }
            )
        )
    return pd.concat(parts, ignore_index=True).set_index("sig_id")


def synth_moa_directions(design: SynthDesign) -> xr.DataArray:
    """The planted MoA directions ``u``: float32 ``("moa", "gene")``, sparse (10 % non-zero)."""
    segs = range(N_SEGMENTS[design.genes])
    u = np.concatenate([_moa_dirs(design.seed, design.n_moas, s) for s in segs], axis=1)
    return xr.DataArray(
        u,
        dims=("moa", "gene"),
        coords={
            "moa": np.array([_moa_name(a) for a in range(design.n_moas)], dtype=object),
            "gene": synth_gene_ids(design.genes),
        },
    )


# ----------------------------------------------------------------------------- lazy arrays


def _default_rows(design: SynthDesign) -> int:
    # about 64 MB per block, whole plate sets so no plate set is generated twice
    return max(TILE, (64 * 2**20 // (4 * design.n_genes)) // TILE * TILE)


def iter_synth_blocks(
    design: SynthDesign, *, block_size: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(sig_ids, values)`` for consecutive blocks of ``block_size`` signatures.

    Notes
    -----
    Holds one block (``block_size x n_genes`` float32, default about 64 MB) at a time;
    total work is linear in ``n_sigs x n_genes``.
    """
    rows = _default_rows(design) if block_size is None else int(block_size)
    if rows < 1:
        raise InputError(f"synthetic: block_size must be at least 1, got {block_size}")
    for lo in range(0, design.n_sigs, rows):
        hi = min(design.n_sigs, lo + rows)
        yield _sig_ids(design, lo, hi), synth_block(design, lo, hi)


def _block_from_info(design: SynthDesign, block_info=None) -> np.ndarray:
    (lo, hi), _ = block_info[None]["array-location"]
    return synth_block(design, lo, hi)


def synth_expr(design: SynthDesign, *, chunks: int | tuple[int, ...] | None = None) -> da.Array:
    """The values as a lazy float32 dask array ``(n_sigs, n_genes)``.

    Parameters
    ----------
    chunks
        Signatures per block (an int or a tuple of block sizes, uneven allowed); genes
        are never split. Default: whole plate sets, about 64 MB per block.

    Notes
    -----
    Built with ``da.map_blocks`` over :func:`synth_block`: each task regenerates its own
    rows from the seed, so nothing is read and values are independent of ``chunks``.
    Memory per task: one block plus one plate set.
    """
    rows = _default_rows(design) if chunks is None else chunks
    try:
        sig_chunks = da.core.normalize_chunks((rows,), (design.n_sigs,))[0]
    except (ValueError, TypeError) as e:
        raise InputError(
            f"synthetic: bad chunks {chunks!r} for {design.n_sigs} signatures: {e}"
        ) from e
    return da.map_blocks(
        _block_from_info,
        design,
        chunks=(sig_chunks, (design.n_genes,)),
        dtype=np.float32,
        meta=np.empty((0, 0), np.float32),
        name=f"synth-{tokenize(design, sig_chunks)}",
    )


def synth_dataset(
    design: SynthDesign,
    *,
    chunks: int | tuple[int, ...] | None = None,
    metadata: Literal["ids", "tables"] = "ids",
) -> xr.Dataset:
    """The synthetic matrix as a lazy ``xr.Dataset`` in the data model of DEVELOPERS.md.

    Parameters
    ----------
    chunks
        See :func:`synth_expr`.
    metadata
        ``"ids"``: ``sig`` and ``gene`` coordinates only, like a release GCTx;
        ``"tables"``: also every siginfo column along ``sig`` and geneinfo column along
        ``gene`` (``gene_id`` dropped: it is ``gene``).

    Notes
    -----
    ``expr`` is lazy. ``"ids"`` builds the id arrays now (about 100 bytes per signature);
    ``"tables"`` computes siginfo now, which generates the landmark values of every
    signature once (about 1 KB memory per signature): use it for small data.

    Examples
    --------
    >>> ds = synth_dataset(synth_design(500, genes="bing", seed=3))
    >>> ds.expr.dims, ds.expr.shape, ds.expr.dtype
    (('sig', 'gene'), (500, 10174), dtype('float32'))
    >>> str(ds.sig.values[0]), str(ds.gene.values[0])
    ('SYN000000_HT29_24H:A01', '780')
    """
    if metadata not in ("ids", "tables"):
        raise InputError(f"synthetic: metadata must be 'ids' or 'tables', got {metadata!r}")
    coords = {
        "sig": ("sig", _sig_ids(design, 0, design.n_sigs)),
        "gene": ("gene", synth_gene_ids(design.genes)),
    }
    if metadata == "tables":
        sig = synth_siginfo(design)
        coords.update({k: ("sig", _coord(sig[k])) for k in SIGINFO_COLUMNS[1:]})
        gene = synth_geneinfo(design)
        coords.update(
            {
                (f"gene_{k}" if k in sig else k): ("gene", _coord(gene[k]))
                for k in GENEINFO_COLUMNS[1:]
            }
        )
    ds = xr.Dataset({"expr": (("sig", "gene"), synth_expr(design, chunks=chunks))}, coords=coords)
    ds.attrs["cmapdask"] = _provenance(design)
    return ds


def _coord(col: pd.Series) -> np.ndarray:
    """A table column in the data model: numbers stay numbers, text is object ``str``
    with ``None`` for missing."""
    if pd.api.types.is_numeric_dtype(col):
        return col.to_numpy()
    return np.array([None if is_missing(v) else str(v) for v in col.tolist()], dtype=object)


def _provenance(design: SynthDesign) -> dict:
    return provenance_record("synthetic", source="cmapdask.synthetic", parameters=asdict(design))


# ----------------------------------------------------------------------------- files


def write_synthetic(
    outdir,
    design: SynthDesign,
    *,
    block_size: int | None = None,
    compression: Literal["none", "gzip"] = "none",
    progress: bool = False,
    storage_options: dict | None = None,
) -> dict[str, str]:
    """Write a release-shaped data set into the folder ``outdir`` (path or fsspec URL).

    Files: ``synth_<genes>_n<sigs>x<genes>.gctx`` (ids only), ``siginfo.txt``,
    ``geneinfo.txt``, ``compoundinfo.txt``, with ``genetic`` ``geneticinfo.txt`` (tab
    separated, header, missing as ``-666``),
    ``pcl.gmt`` and ``synth.json`` (the design and package version). Each file is written
    beside its destination and renamed into place when complete.

    Parameters
    ----------
    block_size
        Signatures per block generated at a time (default about 64 MB of values).
    compression
        ``"none"``: the reference GCTx layout; ``"gzip"``: gzip the matrix chunks too.
    progress
        Ignored (kept for callers): the command line draws progress.
    storage_options
        Passed to fsspec when ``outdir`` is a URL (``s3://bucket/prefix``).

    Returns
    -------
    dict
        File kind (``gctx``, ``siginfo``, ``geneinfo``, ``compoundinfo``, ``pcl``,
        ``design``, with ``genetic`` ``geneticinfo``) to path.

    Notes
    -----
    Runs on the dask scheduler in effect: siginfo and the GCTx are each computed in
    parallel batches of blocks (one per thread) and written in order. Memory: a batch of
    blocks plus the id arrays; the GCTx writer's id handling is the O(n_sigs) part, about
    1 GB peak resident for 1,000,000 signatures. Work is linear in
    ``n_sigs x n_genes``; the output is ``4 x n_sigs x n_genes`` bytes (4 GB for
    1,000,000 x 978).
    """
    from cmapdask.io.atomic import is_local, join, publish_file, url_to_fs
    from cmapdask.io.gctx import gctx_filename, write_gctx
    from cmapdask.io.gmt import write_gmt

    rows = _default_rows(design) if block_size is None else int(block_size)
    if rows < 1:
        raise InputError(f"synthetic: block_size must be at least 1, got {block_size}")
    outdir = os.fspath(outdir)
    fs, path = url_to_fs(outdir, storage_options)
    if fs.exists(path) and not fs.isdir(path):
        raise InputError(f"{outdir}: exists and is not a folder")
    if is_local(fs):
        os.makedirs(path, exist_ok=True)
    names = {
        "gctx": gctx_filename(f"synth_{design.genes}", design.n_sigs, design.n_genes),
        "siginfo": "siginfo.txt",
        "geneinfo": "geneinfo.txt",
        "compoundinfo": "compoundinfo.txt",
        "pcl": "pcl.gmt",
        "design": "synth.json",
    }
    if design.genetic:
        names["geneticinfo"] = "geneticinfo.txt"
    paths = {kind: join(outdir, name) for kind, name in names.items()}
    so = {"storage_options": storage_options}
    tables = [("geneinfo", synth_geneinfo(design)), ("compoundinfo", synth_compoundinfo(design))]
    if design.genetic:
        tables.append(("geneticinfo", synth_geneticinfo(design)))
    for kind, table in tables:
        with publish_file(paths[kind], **so) as tmp:
            _write_table(table, tmp, header=True)
    pcl = synth_pcl(design)
    write_gmt(
        {k: members for k, (_, members) in pcl.items()},
        paths["pcl"],
        descriptions={k: desc for k, (desc, _) in pcl.items()},
        **so,
    )
    with publish_file(paths["siginfo"], **so) as tmp:
        bar = _bar(progress, design.n_sigs, "siginfo")
        ranges = [(lo, min(design.n_sigs, lo + rows)) for lo in range(0, design.n_sigs, rows)]
        batch = _parallelism()
        for i in range(0, len(ranges), batch):
            # a batch of blocks in parallel on the scheduler in effect, written in order
            parts = dask.compute(
                *[
                    dask.delayed(synth_siginfo)(design, start=lo, stop=hi)
                    for lo, hi in ranges[i : i + batch]
                ]
            )
            for part in parts:
                _write_table(part, tmp, header=i == 0 and part is parts[0])
                bar.update(len(part))
        bar.close()
    write_gctx(
        synth_dataset(design, chunks=rows),
        paths["gctx"],
        compression=compression,
        progress=progress,
        **so,
    )
    with publish_file(paths["design"], **so) as tmp, open(tmp, "w") as f:
        json.dump(_provenance(design), f, indent=2)
    return paths


def _write_table(df: pd.DataFrame, path: str, *, header: bool) -> None:
    df.to_csv(
        path,
        sep="\t",
        index=False,
        header=header,
        mode="w" if header else "a",
        na_rep="-666",
        float_format="%.6g",
        lineterminator="\n",
    )


def _parallelism() -> int:
    try:
        from distributed import get_client

        return max(1, sum(get_client().nthreads().values()))
    except (ImportError, ValueError):
        return max(1, os.cpu_count() or 1)


class _NoBar:
    """The library draws no progress (the command line does, cmapdask.cli.runtime)."""

    def update(self, n):
        pass

    def close(self):
        pass


def _bar(enabled: bool, total: int, desc: str):
    return _NoBar()
