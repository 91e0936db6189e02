"""One rule each, through cmapdask.model: the landmark genes (feature space and MODZ
weights alike), the missing MoA (exact recall and its estimate alike), and gene sets
written by columns (GMX) read as the Broad's GMT says."""

from __future__ import annotations

import pytest
import xarray as xr

from cmapdask.errors import GeneSetFormatError
from cmapdask.io.gmt import read_gene_sets, read_gmt, read_gmx
from cmapdask.levels.metadata import landmark_index
from cmapdask.model import feature_genes, is_missing


def _genes(flag_name: str, values) -> xr.Dataset:
    ids = [f"g{i}" for i in range(len(values))]
    return xr.Dataset(coords={"gene": ids, flag_name: ("gene", values)})


@pytest.mark.parametrize("name", ["pr_is_lm", "PR_IS_LM", "pr_is_lmark", "gene_pr_is_lm"])
@pytest.mark.parametrize("true", ["1", "True", "YES"])
def test_one_landmark_rule_for_levels_and_spaces(name, true):
    values = [true, "0", true, "0", "0", true]
    ds = _genes(name, values)
    want = [0, 2, 5]
    assert feature_genes(ds, "landmark").tolist() == want
    assert landmark_index(ds, None).tolist() == want


def test_feature_space_field_any_case():
    ds = _genes("feature_space", ["Landmark", "best inferred", "LANDMARK", "inferred"])
    assert landmark_index(ds, None).tolist() == feature_genes(ds, "landmark").tolist() == [0, 2]


def test_a_978_gene_matrix_is_the_landmark_space(fixtures):
    ds = xr.Dataset(coords={"gene": [f"x{i}" for i in range(978)]})
    assert feature_genes(ds, "landmark").tolist() == list(range(978))
    assert landmark_index(ds, None).tolist() == list(range(978))
    # and the Broad's own landmark list is found by id among other genes
    lm = (fixtures / "cmapm" / "landmark_gene_ids_n978.grp").read_text().split()
    ds = xr.Dataset(coords={"gene": ["extra1", *lm[:500], "extra2"]})
    assert feature_genes(ds, "landmark").tolist() == list(range(1, 501))


def test_one_missing_moa_rule_for_exact_and_estimated_recall():
    from cmapdask.enrich.recall import _combos
    from cmapdask.model.missing import labels
    from cmapdask.similarity.recall import recall_labels

    moa = ["-666", "HDAC inhibitor", None, "", " -666 ", "MEK inhibitor|HDAC inhibitor"]
    annotated_exact = recall_labels(moa).row_code >= 0
    annotated_estimate = _combos(labels(moa))[0] >= 0
    assert annotated_exact.tolist() == [not is_missing(m) for m in moa]
    assert annotated_exact.tolist() == annotated_estimate.tolist()


def _transpose_to_gmx(sets: dict, path):
    names = list(sets)
    depth = max(len(g) for g in sets.values())
    rows = ["\t".join(names), "\t".join(["na"] * len(names))]
    for i in range(depth):
        rows.append("\t".join(sets[n][i] if i < len(sets[n]) else "" for n in names))
    path.write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("name", ["contest_query_ezid_up_n10.gmt", "test.gmt"])
def test_gmx_reads_as_the_same_sets_as_gmt(fixtures, tmp_path, name):
    src = fixtures / ("cmapm" if name.startswith("contest") else "cmappy") / name
    sets = read_gmt(src)
    _transpose_to_gmx(sets, tmp_path / "sets.gmx")
    assert read_gmx(tmp_path / "sets.gmx") == sets
    assert read_gene_sets(tmp_path / "sets.gmx") == sets


def test_bad_gmx_is_one_line(tmp_path):
    p = tmp_path / "bad.gmx"
    p.write_text("A\tA\nna\tna\ng1\tg2\n")
    with pytest.raises(GeneSetFormatError, match="set name 'A' used twice"):
        read_gmx(p)
    p.write_text("A\tB\n")
    with pytest.raises(GeneSetFormatError, match="found 1 row"):
        read_gmx(p)
