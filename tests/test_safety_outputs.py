"""Nothing a user owns is lost; every bad input is one line and the right exit code.

Each case runs the command line in a subprocess (as a user would) and asserts its exit
code, exactly one ``cmapdask: error:`` line on stderr, no traceback, and that no file the
command could touch changed (a before/after snapshot of the case's folder, and of the
current folder). Every case is a row of docs/errors.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cmapdask.io.gctx import write_gctx
from cmapdask.synthetic import synth_dataset, synth_design
from tests.test_connectivity_query import make_store

REPO = Path(__file__).resolve().parents[1]
LONG = "q" * 5000


def _cli(*argv, cwd):
    return subprocess.run(
        [sys.executable, "-m", "cmapdask", *map(str, argv)],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _snapshot(root) -> dict[str, str]:
    """Every file and link under ``root`` with a digest of its bytes (or its target)."""
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = "-> " + os.readlink(p)
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
            else:
                out[rel] = "dir"
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("outputs"))


def make_world(d) -> dict:
    """A GCTx, an indexed store with tables, and a query's gene ids."""
    ds = synth_dataset(synth_design(24, seed=4), metadata="tables").compute()
    write_gctx(ds, d / "ok.gctx")
    url = str(d / "S.zarr")
    sds = make_store(url, seed=4, n_sig=24)
    from cmapdask.connectivity.index import build_index

    build_index(url, space="all")
    g = [str(x) for x in sds["gene"].values]
    return {
        "dir": d,
        "gctx": d / "ok.gctx",
        "store": url,
        "up": ",".join(g[:5]),
        "dn": ",".join(g[5:10]),
    }


def _copy_store(world, dest):
    import shutil

    shutil.copytree(world["store"], dest, symlinks=True)
    return str(dest)


def _q(world, store):
    return [
        "query",
        store,
        "--genes-up",
        world["up"],
        "--genes-down",
        world["dn"],
        "--space",
        "all",
    ]


# each case: (id, setup(world, tmp) -> argv, exit code, words of the error line)
def _store_case(make_argv):
    def setup(world, tmp):
        s = _copy_store(world, tmp / "X.zarr")
        return make_argv(world, s, tmp)

    return setup


def _existing_tsv(argv):
    def setup(world, tmp):
        (tmp / "mine.tsv").write_text("mine\n")
        return [a.format(store=world["store"], out=tmp / "mine.tsv") for a in argv]

    return setup


CASES = [
    # --- the input destroyed
    (
        "query-out-is-store",
        _store_case(lambda w, s, t: [*_q(w, s), "--out", s, "--overwrite"]),
        2,
        ["the input", "is"],
    ),
    (
        "query-out-inside-store",
        _store_case(lambda w, s, t: [*_q(w, s), "--out", f"{s}/res"]),
        2,
        ["lies inside the input"],
    ),
    (
        "level4-dest-is-src",
        _store_case(lambda w, s, t: ["level4", s, s, "--overwrite"]),
        2,
        ["(dest) is the input"],
    ),
    (
        "convert-dest-contains-src",
        lambda w, t: (
            (t / "d").mkdir(),
            (t / "d" / "in.gctx").write_bytes(w["gctx"].read_bytes()),
            ["convert", t / "d" / "in.gctx", t / "d", "--overwrite"],
        )[-1],
        2,
        ["contains the input"],
    ),
    (
        "similarity-member-tables",
        _store_case(lambda w, s, t: ["similarity", s, "--member", "tables", "--k", "3"]),
        2,
        ["member name 'tables'", "another writer"],
    ),
    (
        "similarity-member-absolute",
        _store_case(lambda w, s, t: ["similarity", s, "--member", str(t / "abs"), "--k", "3"]),
        2,
        ["invalid member name", "not a path"],
    ),
    (
        "similarity-member-expr",
        _store_case(lambda w, s, t: ["similarity", s, "--member", "expr", "--k", "3"]),
        2,
        ["names the store's array 'expr'"],
    ),
    (
        "similarity-member-dotdot",
        _store_case(
            lambda w, s, t: ["similarity", s, "--member", "similarity/../../x", "--k", "3"]
        ),
        2,
        ["invalid member name"],
    ),
    (
        "convert-overwrite-user-file-in-store",
        lambda w, t: (
            _copy_store(w, t / "X.zarr"),
            (t / "X.zarr" / "NOTES.txt").write_text("mine"),
            ["convert", w["gctx"], t / "X.zarr", "--overwrite"],
        )[-1],
        2,
        ["NOTES.txt", "did not write", "--overwrite"],
    ),
    # --- a user's file replaced without --overwrite (or not ours, with it)
    *[
        (f"{cmd}-out-existing-file", _existing_tsv(argv), 2, ["mine.tsv: already exists"])
        for cmd, argv in [
            ("sigs", ["sigs", "{store}", "--out", "{out}"]),
            ("moas", ["moas", "{store}", "--out", "{out}"]),
            ("sql", ["sql", "{store}", "select 1", "--out", "{out}"]),
            ("targets", ["targets", "{store}", "--out", "{out}"]),
            (
                "cluster-table",
                [
                    "cluster",
                    "{store}",
                    "--method",
                    "kmeans",
                    "--k",
                    "2",
                    "--name",
                    "km",
                    "--space",
                    "all",
                    "--table",
                    "{out}",
                ],
            ),
        ]
    ],
    (
        "sigs-gctx-existing-file",
        lambda w, t: (
            (t / "m.gctx").write_text("mine"),
            ["sigs", w["store"], "--out", t / "m.gctx"],
        )[-1],
        2,
        ["m.gctx: already exists"],
    ),
    (
        "sql-overwrite-not-ours",
        lambda w, t: (
            (t / "m.tsv").write_text("mine"),
            ["sql", w["store"], "select 1", "--out", t / "m.tsv", "--overwrite"],
        )[-1],
        2,
        ["was not written by cmapdask"],
    ),
    (
        "similarity-gctx-existing-file",
        lambda w, t: (
            (t / "m.gctx").write_text("mine"),
            [
                "similarity",
                w["store"],
                "--full",
                "--space",
                "all",
                "--out",
                t / "f.zarr",
                "--gctx",
                t / "m.gctx",
            ],
        )[-1],
        2,
        ["m.gctx: already exists"],
    ),
    (
        "recall-out-existing-file",
        lambda w, t: (
            (t / "m.tsv").write_text("mine"),
            (t / "ann.gmt").write_text("a\t\tx\ty\n"),
            ["recall", w["store"], "--annotations", t / "ann.gmt", "--out", t / "m.tsv"],
        )[-1],
        2,
        ["m.tsv: already exists"],
    ),
    (
        "enrich-out-existing-file",
        lambda w, t: (
            (t / "m.tsv").write_text("mine"),
            (t / "ann.gmt").write_text("a\t\tx\ty\n"),
            ["enrich", t / "nores", "--annotations", t / "ann.gmt", "--out", t / "m.tsv"],
        )[-1],
        2,
        ["m.tsv: already exists"],
    ),
    # --- tracebacks for user errors, now one line
    ("convert-empty-dest", lambda w, t: ["convert", w["gctx"], ""], 2, ["empty path"]),
    (
        "convert-dangling-symlink",
        lambda w, t: (os.symlink(t / "nowhere" / "x", t / "dl"), ["convert", w["gctx"], t / "dl"])[
            -1
        ],
        2,
        ["symbolic link", "does not exist"],
    ),
    (
        "convert-under-proc",
        lambda w, t: ["convert", w["gctx"], "/proc/cmapdask-x.zarr"],
        2,
        ["cannot create it in /proc"],
    ),
    (
        "synth-under-a-file",
        lambda w, t: (
            (t / "plain").write_text("x"),
            ["synth", t / "plain" / "sub", "--n-sigs", "10"],
        )[-1],
        2,
        ["is a file, not a folder"],
    ),
    (
        "storage-options-not-object",
        lambda w, t: ["convert", w["gctx"], t / "x.zarr", "--storage-options", "[1,2]"],
        2,
        ["--storage-options", "JSON object"],
    ),
    (
        "storage-options-not-json",
        lambda w, t: ["sigs", w["store"], "--storage-options", "{nope"],
        2,
        ["not JSON"],
    ),
    (
        "scheduler-file-not-json",
        lambda w, t: (
            (t / "sched.json").write_text("nope"),
            ["convert", w["gctx"], t / "x.zarr", "--scheduler", t / "sched.json"],
        )[-1],
        2,
        ["not a scheduler file"],
    ),
    (
        "scheduler-file-no-address",
        lambda w, t: (
            (t / "sched.json").write_text("{}"),
            ["convert", w["gctx"], t / "x.zarr", "--scheduler", t / "sched.json"],
        )[-1],
        2,
        ["names no address"],
    ),
    (
        "invalid-bucket-name",
        lambda w, t: [
            "convert",
            w["gctx"],
            "s3://Invalid_Bucket!/x.zarr",
            "--storage-options",
            json.dumps({"anon": True, "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}}),
        ],
        2,
        ["invalid bucket name"],
    ),
    (
        "unknown-url-scheme",
        lambda w, t: ["convert", w["gctx"], "zzz://a/b.zarr"],
        2,
        ["unknown URL scheme 'zzz'"],
    ),
    (
        "store-missing-expr",
        lambda w, t: (
            (t / "b.zarr").mkdir(),
            (t / "b.zarr" / "zarr.json").write_bytes(Path(w["store"], "zarr.json").read_bytes()),
            ["index", t / "b.zarr", "--space", "all"],
        )[-1],
        2,
        ["array 'expr' is missing"],
    ),
    (
        "query-long-gene-set-name",
        lambda w, t: [*_q(w, w["store"])[:2], "--up", LONG, "--out", t / "r"],
        2,
        ["File name too long"],
    ),
    (
        "sigs-out-is-folder",
        lambda w, t: ((t / "x.parquet").mkdir(), ["sigs", w["store"], "--out", t / "x.parquet"])[
            -1
        ],
        2,
        ["is a folder, not a file"],
    ),
    (
        "download-into-a-file",
        lambda w, t: (
            (t / "plain").write_text("x"),
            [
                "download",
                "LINCS2020",
                t / "plain",
                "--files",
                "siginfo",
                "--base-url",
                "memory://none",
            ],
        )[-1],
        2,
        ["is a file, not a folder"],
    ),
    (
        "append-sig-info-missing",
        lambda w, t: ["append", t / "coll", w["gctx"], "--sig-info", t / "missing.txt"],
        2,
        ["missing.txt: no such file"],
    ),
    (
        "serve-jobs-dir-a-file",
        lambda w, t: (
            (t / "jobs").write_text("x"),
            ["serve", w["store"], "--jobs-dir", t / "jobs"],
        )[-1],
        2,
        ["--jobs-dir", "is a file, not a folder"],
    ),
]

NO_CLUSTER_ARGS = {"sql", "sigs", "moas", "download", "serve"}


@pytest.mark.parametrize("setup,code,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_case_is_one_line_and_touches_nothing(world, tmp_path, setup, code, words):
    run_case(world, tmp_path, setup, code, words)


def run_case(world, tmp_path, setup, code, words, *, no_cluster=NO_CLUSTER_ARGS) -> None:
    """Run one case's command line; assert one error line, its exit code and words, and
    that nothing changed in its folder, the world's folder or the current folder."""
    work = tmp_path / "work"
    work.mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    argv = [str(a) for a in setup(world, work)]
    if argv[0] not in no_cluster:
        argv += [] if "--scheduler" in argv else ["--scheduler", "none"]
        argv += ["--quiet"]
    before, before_store = _snapshot(work), _snapshot(world["dir"])
    r = _cli(*argv, cwd=cwd)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert "Traceback" not in r.stderr, r.stderr
    assert len(lines) == 1 and lines[0].startswith("cmapdask: error: "), r.stderr
    assert r.returncode == code, r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert _snapshot(work) == before
    assert _snapshot(world["dir"]) == before_store
    assert _snapshot(cwd) == {}


def test_file_outputs_replace_only_what_cmapdask_wrote(world, tmp_path):
    out = tmp_path / "sigs.tsv"
    base = ["sigs", world["store"], "--out", out]
    assert _cli(*base, cwd=tmp_path).returncode == 0
    first = out.read_bytes()
    assert (tmp_path / ".sigs.tsv.cmapdask").exists()
    again = _cli(*base, cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert _cli(*base, "--overwrite", cwd=tmp_path).returncode == 0
    assert out.read_bytes() == first
    out.write_bytes(first + b"my edit\n")  # changed by the user: no longer ours
    edited = _cli(*base, "--overwrite", cwd=tmp_path)
    assert edited.returncode == 2 and "was not written by cmapdask" in edited.stderr
    assert out.read_bytes() == first + b"my edit\n"


def test_result_overwrite_keeps_a_users_file(world, tmp_path):
    res = tmp_path / "res"
    argv = [*_q(world, world["store"]), "--out", res, "--scheduler", "none", "--quiet"]
    assert _cli(*argv, cwd=tmp_path).returncode == 0
    (res / "analysis.R").write_text("mine")
    r = _cli(*argv, "--overwrite", cwd=tmp_path)
    assert r.returncode == 2 and "analysis.R" in r.stderr and "did not write" in r.stderr
    assert (res / "analysis.R").read_text() == "mine"
    (res / "analysis.R").unlink()
    assert _cli(*argv, "--overwrite", cwd=tmp_path).returncode == 0
