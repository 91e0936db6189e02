"""The query command against a store on object storage, with GRP files and gene symbols.

A real S3-compatible server (moto in server mode on loopback, from tests/conftest.py);
the result must equal the same query against a local copy of the store.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cmapdask.cli import main
from cmapdask.io.gctx import read_gctx
from cmapdask.io.gmt import write_grp
from cmapdask.io.store import write_store
from tests.test_connectivity_query import make_store

pytestmark = [pytest.mark.s3, pytest.mark.filterwarnings("ignore:.*CMap queries use 10-150")]


def test_query_cli_on_s3_with_grp_and_symbols(s3_server, tmp_path, capsys):
    local = str(tmp_path / "s.zarr")
    ds = make_store(local, seed=11, n_sig=30)
    url = "s3://cmapdask-test/stores/query.zarr"
    write_store(ds, url, storage_options=s3_server, chunk_rows=10)
    opts = ["--storage-options", json.dumps(s3_server)]
    for target, extra in ((local, []), (url, opts)):
        assert (
            main(["index", target, "--space", "all", "--scheduler", "none", "--quiet", *extra]) == 0
        )

    genes = list(ds["gene"].values)
    up = write_grp(genes[:8], str(tmp_path / "q_UP.grp"))
    dn = write_grp(genes[20:27], str(tmp_path / "q_DN.grp"))
    runs = {}
    for name, target, extra in (("local", local, []), ("s3", url, opts)):
        out = str(tmp_path / name)
        assert (
            main(
                [
                    "query",
                    target,
                    "--up",
                    up,
                    "--down",
                    dn,
                    "--out",
                    out,
                    "--space",
                    "all",
                    "--tau",
                    "none",
                    "--scheduler",
                    "none",
                    "--quiet",
                    *extra,
                ]
            )
            == 0
        )
        runs[name] = read_gctx(f"{out}/matrices/query/cs.gctx")["expr"].values
    np.testing.assert_array_equal(runs["local"], runs["s3"])
    assert np.isfinite(runs["s3"]).all()

    # gene symbols instead of ids give the same numbers
    symbols = dict(zip(ds["gene"].values, ds["gene_symbol"].values, strict=False))
    out = str(tmp_path / "symbols")
    assert (
        main(
            [
                "query",
                url,
                "--genes-up",
                ",".join(symbols[g] for g in genes[:8]),
                "--genes-down",
                ",".join(symbols[g] for g in genes[20:27]),
                "--out",
                out,
                "--space",
                "all",
                "--tau",
                "none",
                "--scheduler",
                "none",
                "--quiet",
                *opts,
            ]
        )
        == 0
    )
    np.testing.assert_array_equal(
        read_gctx(f"{out}/matrices/query/cs.gctx")["expr"].values, runs["s3"]
    )

    # a store that is not there: one line, exit code 2
    capsys.readouterr()
    assert (
        main(
            [
                "query",
                "s3://cmapdask-test/stores/none.zarr",
                "--up",
                up,
                "--down",
                dn,
                "--out",
                str(tmp_path / "x"),
                "--scheduler",
                "none",
                "--quiet",
                *opts,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.zarr" in err[0]
