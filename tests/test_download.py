"""Release downloads against a plain HTTP server on loopback (ranged reads, a connection
cut mid-file) and a moto S3 server, with files of the real names and layout."""

from __future__ import annotations

import gzip
import http.server
import os
import re
import shutil
import threading
import uuid
from pathlib import Path

import dask
import numpy as np
import pytest

import cmapdask
import cmapdask.data as cd
from cmapdask.cli import main
from cmapdask.data.download import download

L5 = "level5/level5_beta_trt_cp_n720216x12328.gctx"


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """A small LINCS2020-shaped release folder and a GEO-shaped one."""
    root = tmp_path_factory.mktemp("mirror")
    design = cmapdask.synth_design(300, genes="landmark", seed=5)
    with dask.config.set(scheduler="threads"):
        paths = cmapdask.write_synthetic(root / "synth", design)
    rel = root / "LINCS2020"
    (rel / "level5").mkdir(parents=True)
    shutil.copy(paths["gctx"], rel / L5)
    for table, name in (
        ("siginfo", "siginfo_beta.txt"),
        ("geneinfo", "geneinfo_beta.txt"),
        ("compoundinfo", "compoundinfo_beta.txt"),
    ):
        shutil.copy(paths[table], rel / name)
    (rel / "cellinfo_beta.txt").write_text("cell_iname\tprimary_disease\nA375\tmelanoma\n")
    (rel / "instinfo_beta.txt").write_text("sample_id\tcell_iname\ns1\tA375\n")
    geo = root / "GSE92742"
    geo.mkdir()
    with (
        open(paths["gctx"], "rb") as f,
        gzip.open(geo / "GSE92742_Broad_LINCS_Level5_COMPZ.MODZ_n473647x12328.gctx.gz", "wb") as g,
    ):
        g.write(f.read())
    with (
        open(paths["siginfo"], "rb") as f,
        gzip.open(geo / "GSE92742_Broad_LINCS_sig_info.txt.gz", "wb") as g,
    ):
        g.write(f.read())
    return {"root": root, "gctx": paths["gctx"]}


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files with byte ranges; cuts the first transfer of each file mid-way when
    the server's ``cut`` flag is set."""

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, body: bool):
        path = Path(self.server.root) / self.path.lstrip("/").split("?")[0]
        if not path.is_file():
            self.send_error(404)
            return
        size = path.stat().st_size
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            a, _, b = rng[6:].partition("-")
            start = int(a)
            end = int(b) if b else size - 1
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.server.ranges.append((path.name, start))
        else:
            end = size - 1
            self.send_response(200)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if not body:
            return
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(end - start + 1)
        self.server.requests[path.name] = n = self.server.requests.get(path.name, 0) + 1
        if self.server.cut and n == 3:  # the third ranged read of a file is cut
            self.wfile.write(data[: len(data) // 3])
            self.wfile.flush()
            self.connection.shutdown(2)  # the connection drops mid-file
            return
        self.wfile.write(data)


@pytest.fixture
def http_server(mirror):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.root, server.ranges, server.cut, server.requests = str(mirror["root"]), [], False, {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _url(server, release="LINCS2020"):
    return f"http://127.0.0.1:{server.server_address[1]}/{release}"


def test_download_and_convert(http_server, mirror, tmp_path):
    store = str(tmp_path / "store.zarr")
    with dask.config.set(scheduler="threads"):
        got = download(
            "LINCS2020",
            tmp_path / "dl",
            base_url=_url(http_server),
            files=["level5_beta_trt_cp*", "siginfo", "geneinfo", "compoundinfo", "cellinfo"],
            convert_to=store,
        )
    assert Path(got[L5]).read_bytes() == Path(mirror["gctx"]).read_bytes()
    assert sorted(cd.store_tables(store)) == ["cellinfo", "compoundinfo", "geneinfo", "siginfo"]
    assert list(cd.cells(store).cell_iname) == ["A375"]
    ref = cmapdask.read_gctx(mirror["gctx"])
    np.testing.assert_array_equal(cmapdask.open_store(store).expr.values, ref.expr.values)
    assert not list((tmp_path / "dl").glob("*.part"))


def test_cut_connection_resumes(http_server, mirror, tmp_path):
    http_server.cut = True
    with dask.config.set({"cmapdask.download.block_mb": 0.125}):
        got = download(
            "LINCS2020", tmp_path, base_url=_url(http_server), files=["level5_beta_trt_cp*"]
        )
    assert Path(got[L5]).read_bytes() == Path(mirror["gctx"]).read_bytes()
    starts = [start for name, start in http_server.ranges if name == os.path.basename(L5)]
    # the third read was cut; the transfer went on from the bytes already on disk
    assert len(starts) > 4 and starts.count(0) == 1 and 0 < starts[3] <= starts[2], starts


def test_partial_file_resumes_from_its_end(http_server, mirror, tmp_path):
    data = Path(mirror["gctx"]).read_bytes()
    part = tmp_path / (os.path.basename(L5) + ".part")
    part.write_bytes(data[:10_000])
    got = download("LINCS2020", tmp_path, base_url=_url(http_server), files=["level5_beta_trt_cp*"])
    assert Path(got[L5]).read_bytes() == data
    assert (os.path.basename(L5), 10_000) in http_server.ranges
    # complete now: a second run fetches nothing
    http_server.ranges.clear()
    download("LINCS2020", tmp_path, base_url=_url(http_server), files=["level5_beta_trt_cp*"])
    assert http_server.ranges == []


def test_geo_gz_matrix_is_unpacked(http_server, mirror, tmp_path):
    got = download(
        "GSE92742", tmp_path, base_url=_url(http_server, "GSE92742"), files=["level5", "siginfo"]
    )
    matrix = next(p for p in got.values() if p.endswith(".gctx"))
    assert Path(matrix).read_bytes() == Path(mirror["gctx"]).read_bytes()


def test_cli_and_errors(http_server, tmp_path, capsys):
    assert (
        main(
            [
                "download",
                "LINCS2020",
                str(tmp_path),
                "--base-url",
                _url(http_server),
                "--files",
                "siginfo",
                "--quiet",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip().endswith("siginfo_beta.txt")
    assert main(["download", "LINCS2020", str(tmp_path), "--list"]) == 0
    assert "level5_beta_trt_cp_n720216x12328.gctx" in capsys.readouterr().out
    code = main(
        [
            "download",
            "LINCS2020",
            str(tmp_path),
            "--base-url",
            _url(http_server, "nothing"),
            "--files",
            "siginfo",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "not on the server" in err
    assert main(["download", "LINCS2020", str(tmp_path), "--files", "nope*"]) == 2


@pytest.mark.s3
def test_download_from_s3(mirror, s3_server, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_server)
    prefix = f"cmapdask-test/{uuid.uuid4().hex[:8]}/LINCS2020"
    fs.put(str(mirror["root"] / "LINCS2020") + "/", prefix, recursive=True)
    got = download(
        "LINCS2020",
        tmp_path,
        base_url=f"s3://{prefix}",
        storage_options=s3_server,
        files=["level5_beta_trt_cp*", "siginfo"],
    )
    assert Path(got[L5]).read_bytes() == Path(mirror["gctx"]).read_bytes()


def test_list_is_grouped_sized_and_totalled(capsys):
    from cmapdask.data.download import release_listing

    text = release_listing("LINCS2020")
    lines = text.splitlines()
    heads = [line.split(" (")[0] for line in lines if not line.startswith((" ", "total"))]
    assert heads[1:] == ["level5", "level4", "level3", "tables"], heads
    # float32 signatures x genes: 720,216 x 12,328 x 4 bytes, the Level 5 default marked
    assert "  *   35.5 GB  level5/level5_beta_trt_cp_n720216x12328.gctx" in lines
    assert "  *   59.3 GB  level5/level5_beta_all_n1201944x12328.gctx" == lines[2]  # largest
    assert "  *         -  siginfo_beta.txt" in lines
    sizes = [
        int(n) * int(g) * 4 for n, g in re.findall(r"_n(\d+)x(\d+)\.gctx", text)
    ]  # every matrix listed once
    assert len(sizes) == 18 and lines[-1].startswith(f"total {sum(sizes) / 1e9:.1f} GB of matrices")
    assert main(["download", "GSE92742", "--list", "--files", "level5", "siginfo"]) == 0
    out = capsys.readouterr().out
    assert "23.4 GB  GSE92742_Broad_LINCS_Level5" in out and "unpacked" in out
    assert main(["download", "LINCS2020"]) == 2
    assert "DEST" in capsys.readouterr().err
