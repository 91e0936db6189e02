"""Collections, downloads, forged files, option values and `serve`: one line, nothing left.

The same pattern as tests/test_safety_outputs.py (its `run_case`): each case runs the
command line in a subprocess and asserts its exit code, exactly one ``cmapdask: error:``
line, no traceback and a before/after snapshot of every file it could touch. Every case
is a row of docs/errors.md.
"""

from __future__ import annotations

import json
import os
import shutil
import socket

import h5py
import numpy as np
import pytest

from cmapdask.io.gctx import COL_META, MATRIX_PATH, ROW_META
from tests.test_safety_outputs import NO_CLUSTER_ARGS, _cli, _snapshot, make_world, run_case

NO_CLUSTER = NO_CLUSTER_ARGS | {"genes"}
_HELD: list[socket.socket] = []  # a port kept busy while a case runs


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """make_world's GCTx and store, and a collection with one staged version."""
    w = make_world(tmp_path_factory.mktemp("refusals"))
    coll = w["dir"] / "coll"
    r = _cli("append", coll, w["gctx"], "--scheduler", "none", "--quiet", cwd=w["dir"])
    assert r.returncode == 0, r.stderr
    w["coll"] = coll
    yield w
    while _HELD:
        _HELD.pop().close()


def _coll(world, tmp, **files):
    """A copy of the collection, with ``files`` (name -> text, or None: a folder) added."""
    dest = tmp / "C"
    shutil.copytree(world["coll"], dest)
    for name, text in files.items():
        (dest / name).mkdir() if text is None else (dest / name).write_text(text)
    return dest


def _gctx_copy(world, tmp, name, edit):
    dest = tmp / name
    shutil.copy(world["gctx"], dest)
    with h5py.File(dest, "r+") as f:
        edit(f)
    return dest


def _empty_first_id(f):
    ids = f[f"{COL_META}/id"][()]
    ids[0] = b""
    del f[f"{COL_META}/id"]
    f[f"{COL_META}/id"] = ids


def _latin1_field(f):
    values = f[f"{COL_META}/cell_iname"][()].astype("S16")
    values[0] = b"caf\xe9"  # latin-1, not UTF-8
    del f[f"{COL_META}/cell_iname"]
    f[f"{COL_META}/cell_iname"] = values


def _forged(tmp, chunked=True):
    """A small file declaring a 2e9 x 978 matrix: chunked with gzip and no chunk written
    (fill values are legal: its 2 ids refuse it), or contiguous with no bytes."""
    path = tmp / "forged.gctx"
    with h5py.File(path, "w") as f:
        opts = {"chunks": (1000, 978), "compression": 9} if chunked else {}
        f.create_dataset(MATRIX_PATH, shape=(2_000_000_000, 978), dtype="f4", **opts)
        f[f"{COL_META}/id"] = np.array([b"a", b"b"])
        f[f"{ROW_META}/id"] = np.array([b"g"])
    return path


def _busy_port(world, tmp):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    _HELD.append(s)
    return ["serve", world["store"], "--port", s.getsockname()[1], "--jobs-dir", tmp / "jobs"]


_DL = ["download", "LINCS2020"]

CASES = [
    # --- collections: what is not one is refused, a damaged pointer is named
    (
        "rebuild-current-not-json",
        lambda w, t: ["rebuild", _coll(w, t, CURRENT="{nope"), "--space", "all"],
        2,
        ["CURRENT: not a collection pointer (not JSON"],
    ),
    (
        "rebuild-current-names-missing-version",
        lambda w, t: [
            "rebuild",
            _coll(w, t, CURRENT=json.dumps({"version": "v000009"})),
            "--space",
            "all",
        ],
        2,
        ["names version 'v000009'", "does not hold"],
    ),
    (
        "append-into-plain-store",
        lambda w, t: (
            shutil.copytree(w["store"], t / "S.zarr"),
            ["append", t / "S.zarr", w["gctx"]],
        )[-1],
        2,
        ["is a signature store, not a cmapdask collection"],
    ),
    (
        "append-into-users-folder",
        lambda w, t: (
            (t / "mine").mkdir(),
            (t / "mine" / "NOTES.txt").write_text("mine"),
            ["append", t / "mine", w["gctx"]],
        )[-1],
        2,
        ["is a folder, not a cmapdask collection (holds NOTES.txt)"],
    ),
    (
        "append-store-a-file",
        lambda w, t: ((t / "plain").write_text("x"), ["append", t / "plain", w["gctx"]])[-1],
        2,
        ["is a file, not a collection folder"],
    ),
    (
        "append-lock-a-folder",
        lambda w, t: ["append", _coll(w, t, LOCK=None), w["gctx"]],
        2,
        ["LOCK: is a folder, not a lock file"],
    ),
    (
        "rebuild-store-a-file",
        lambda w, t: ((t / "plain").write_text("x"), ["rebuild", t / "plain"])[-1],
        2,
        ["is a file, not a collection folder"],
    ),
    ("rebuild-nosuch", lambda w, t: ["rebuild", t / "nosuch"], 2, ["no such collection"]),
    (
        "append-failed-leaves-no-collection",
        lambda w, t: ["append", t / "new", _gctx_copy(w, t, "e.gctx", _empty_first_id)],
        2,
        ["empty column (signature) id"],
    ),
    # --- downloads: the mirror's answer is checked
    (
        "download-six-byte-table",
        lambda w, t: (
            (t / "mirror").mkdir(),
            (t / "mirror" / "siginfo_beta.txt").write_text("sig_id"),
            [*_DL, t / "dl", "--files", "siginfo", "--base-url", t / "mirror", "--quiet"],
        )[-1],
        2,
        ["siginfo_beta.txt: not a table", "6 bytes"],
    ),
    (
        "download-missing-mirror-file",
        lambda w, t: (
            (t / "mirror").mkdir(),
            [*_DL, t / "dl", "--files", "siginfo", "--base-url", t / "mirror", "--quiet"],
        )[-1],
        2,
        ["siginfo_beta.txt: not on the server"],
    ),
    # --- files whose header says more than their bytes hold
    (
        "convert-empty-signature-id",
        lambda w, t: ["convert", _gctx_copy(w, t, "e.gctx", _empty_first_id), t / "x.zarr"],
        2,
        ["1 empty column (signature) id(s)", "position 0"],
    ),
    (
        "convert-forged-shape",
        lambda w, t: ["convert", _forged(t), t / "x.zarr"],
        2,
        ["2 column (signature) ids", "2000000000"],
    ),
    (
        "convert-forged-contiguous",
        lambda w, t: ["convert", _forged(t, chunked=False), t / "x.zarr"],
        2,
        ["declares 2000000000 x 978 values", "forged"],
    ),
    # --- option values, refused as they are parsed
    *[
        (f"option-{name}", lambda w, t, a=argv: [x.format(**w) for x in a], 2, words)
        for name, argv, words in [
            ("workers-0", ["convert", "{gctx}", "x.zarr", "--workers", "0"], ["--workers"]),
            ("workers-neg", ["convert", "{gctx}", "x.zarr", "--workers", "-1"], ["--workers"]),
            (
                "min-reference-0",
                ["level4", "{store}", "l4.zarr", "--min-reference", "0"],
                ["--min-reference", "positive integer"],
            ),
            ("genes-space", ["genes", "{store}", "--space", "bogus"], ["'bogus' is not one of"]),
            ("touchstone", ["sigs", "{store}", "--touchstone", "maybe"], ["1 or 0"]),
            ("dose", ["sigs", "{store}", "--dose", "ten buckets"], ["not a quantity"]),
            ("scheduler-empty", ["convert", "{gctx}", "x.zarr", "--scheduler", ""], ["empty"]),
        ]
    ],
    # --- serve: the address is tried before anything starts or is made
    (
        "serve-host-not-here",
        lambda w, t: ["serve", w["store"], "--host", "192.0.2.1", "--jobs-dir", t / "jobs"],
        2,
        ["--host 192.0.2.1", "cannot listen there"],
    ),
    ("serve-busy-port", _busy_port, 2, ["cannot listen there"]),
]


@pytest.mark.parametrize("setup,code,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_case_is_one_line_and_touches_nothing(world, tmp_path, setup, code, words):
    run_case(world, tmp_path, setup, code, words, no_cluster=NO_CLUSTER)


def test_non_utf8_metadata_is_decoded_with_a_warning(world, tmp_path):
    src = _gctx_copy(world, tmp_path, "l.gctx", _latin1_field)
    r = _cli("convert", src, tmp_path / "l.zarr", "--scheduler", "none", "--quiet", cwd=tmp_path)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert len(lines) == 1 and lines[0].startswith("cmapdask: warning: "), r.stderr
    assert f"{COL_META}/cell_iname" in lines[0] and "decoded as latin-1" in lines[0]
    import cmapdask

    ds = cmapdask.open_store(str(tmp_path / "l.zarr"))
    assert ds["cell_iname"].values[0] == "café"  # the documented rule: latin-1


def test_failed_index_leaves_no_group(world, tmp_path, monkeypatch):
    """A failure mid-compute (here a rank task raising) leaves the store as it was: no
    empty ``index/`` group, no temporaries."""
    import dask

    import cmapdask.connectivity.index as index
    from cmapdask.errors import InputError

    store = tmp_path / "S.zarr"
    shutil.copytree(world["store"], store)
    shutil.rmtree(store / "index")
    before = _snapshot(store)

    def fail(block, url):
        raise InputError(f"{url}: planted failure")

    monkeypatch.setattr(index, "_rank_block", fail)
    with dask.config.set(scheduler="sync"), pytest.raises(InputError, match="planted"):
        index.build_index(str(store), space="all")
    assert _snapshot(store) == before


@pytest.mark.parametrize(
    "n_sig,chunk_rows,chunk_mb", [(300, None, 256), (1000, None, 0.1), (300, 128, 256)]
)
def test_index_size_in_proportion_to_its_data(tmp_path, n_sig, chunk_rows, chunk_mb):
    """Index chunks are sized to the data: no block padded past the signatures (the
    rank (int16) and score (float32) of each gene and signature, 6 bytes, and the
    padding of at most one partial block per gene)."""
    import dask

    from cmapdask.connectivity.index import build_index, open_index
    from tests.test_connectivity_query import N_GENE, make_store

    url = str(tmp_path / "s.zarr")
    make_store(url, seed=1, n_sig=n_sig)
    with dask.config.set({"cmapdask.connectivity.index_chunk_mb": chunk_mb}, scheduler="threads"):
        build_index(url, space="all", chunk_rows=chunk_rows)
    rows = open_index(url, space="all").chunk_rows
    chunks = [
        os.path.getsize(os.path.join(d, f))
        for v in ("rank", "score")
        for d, _, files in os.walk(tmp_path / "s.zarr" / "index" / "all" / v / "c")
        for f in files
    ]
    data = 6 * N_GENE * n_sig
    padding = 6 * N_GENE * (-n_sig % rows)
    assert rows <= n_sig and sum(chunks) <= data + padding
    blocks = -(-n_sig // rows)
    assert padding < 6 * N_GENE * (chunk_rows or blocks)  # default: < 1 row per block
    assert chunk_mb == 256 or blocks > 1
