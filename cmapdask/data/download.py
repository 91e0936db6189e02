"""Release downloads: the public LINCS 2020 release and GEO's GSE92742 / GSE70138.

A release is a catalog of files with roles (``level5``, ``siginfo``, ...) under a base URL
(configurable: ``cmapdask.download.<release>.base_url``, or ``--base-url``), fetched
through fsspec (HTTPS, or S3 without credentials), resumed where a previous transfer
stopped, checked against the server's size (and SHA-256 where the catalog has one), and
optionally converted into a store with the tables joined.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass

import dask

from cmapdask.errors import InputError, TransferError
from cmapdask.io.atomic import url_to_fs

__all__ = ["RELEASES", "ReleaseFile", "release_files", "release_listing", "download"]

_SHAPE = re.compile(r"_n(\d+)x(\d+)")


@dataclass(frozen=True)
class ReleaseFile:
    path: str  # relative to the release's base URL
    role: str  # level3|level4|level5|siginfo|geneinfo|compoundinfo|cellinfo|instinfo|other
    sha256: str | None = None

    @property
    def size(self) -> int | None:
        """A matrix's size on disk once unpacked, from the shape in its name: float32
        values, signatures x genes x 4 bytes (HDF5's own overhead is a few MB); None
        for a table (the catalog does not record its size)."""
        m = _SHAPE.search(self.path)
        return int(m[1]) * int(m[2]) * 4 if m and self.role.startswith("level") else None


_L2020 = "LINCS2020"
RELEASES: dict[str, dict] = {
    # CLUE's build of the 2020 release (clue.io/data/CMap2020), public on S3
    _L2020: {
        "base_url": "https://s3.amazonaws.com/macchiato.clue.io/builds/LINCS2020",
        "files": [
            *(
                ReleaseFile(f"level5/level5_beta_{k}.gctx", "level5")
                for k in (
                    "trt_cp_n720216x12328",
                    "trt_sh_n238351x12328",
                    "trt_oe_n34171x12328",
                    "trt_xpr_n142901x12328",
                    "ctl_n58022x12328",
                    "all_n1201944x12328",
                )
            ),
            *(
                ReleaseFile(f"level4/level4_beta_{k}.gctx", "level4")
                for k in (
                    "trt_cp_n1805898x12328",
                    "trt_sh_n453175x12328",
                    "trt_oe_n131668x12328",
                    "trt_xpr_n420583x12328",
                    "ctl_n188708x12328",
                    "all_n3026460x12328",
                )
            ),
            *(
                ReleaseFile(f"level3/level3_beta_{k}.gctx", "level3")
                for k in (
                    "trt_cp_n1805898x12328",
                    "trt_sh_n453175x12328",
                    "trt_oe_n131668x12328",
                    "trt_xpr_n420583x12328",
                    "ctl_n188708x12328",
                    "all_n3026460x12328",
                )
            ),
            ReleaseFile("siginfo_beta.txt", "siginfo"),
            ReleaseFile("geneinfo_beta.txt", "geneinfo"),
            ReleaseFile("compoundinfo_beta.txt", "compoundinfo"),
            ReleaseFile("cellinfo_beta.txt", "cellinfo"),
            ReleaseFile("instinfo_beta.txt", "instinfo"),
        ],
    },
    # GEO series of the 2017 paper (phase I) and its phase II update
    "GSE92742": {
        "base_url": "https://ftp.ncbi.nlm.nih.gov/geo/series/GSE92nnn/GSE92742/suppl",
        "files": [
            ReleaseFile("GSE92742_Broad_LINCS_Level5_COMPZ.MODZ_n473647x12328.gctx.gz", "level5"),
            ReleaseFile(
                "GSE92742_Broad_LINCS_Level4_ZSPCINF_mlr12k_n1319138x12328.gctx.gz", "level4"
            ),
            ReleaseFile("GSE92742_Broad_LINCS_Level3_INF_mlr12k_n1319138x12328.gctx.gz", "level3"),
            ReleaseFile("GSE92742_Broad_LINCS_sig_info.txt.gz", "siginfo"),
            ReleaseFile("GSE92742_Broad_LINCS_gene_info.txt.gz", "geneinfo"),
            ReleaseFile("GSE92742_Broad_LINCS_pert_info.txt.gz", "compoundinfo"),
            ReleaseFile("GSE92742_Broad_LINCS_cell_info.txt.gz", "cellinfo"),
            ReleaseFile("GSE92742_Broad_LINCS_inst_info.txt.gz", "instinfo"),
            ReleaseFile("GSE92742_Broad_LINCS_sig_metrics.txt.gz", "other"),
        ],
    },
    "GSE70138": {
        "base_url": "https://ftp.ncbi.nlm.nih.gov/geo/series/GSE70nnn/GSE70138/suppl",
        "files": [
            ReleaseFile(
                "GSE70138_Broad_LINCS_Level5_COMPZ_n118050x12328_2017-03-06.gctx.gz", "level5"
            ),
            ReleaseFile(
                "GSE70138_Broad_LINCS_Level4_ZSPCINF_mlr12k_n345976x12328_2017-03-06.gctx.gz",
                "level4",
            ),
            ReleaseFile(
                "GSE70138_Broad_LINCS_Level3_INF_mlr12k_n345976x12328_2017-03-06.gctx.gz", "level3"
            ),
            ReleaseFile("GSE70138_Broad_LINCS_sig_info_2017-03-06.txt.gz", "siginfo"),
            ReleaseFile("GSE70138_Broad_LINCS_gene_info_2017-03-06.txt.gz", "geneinfo"),
            ReleaseFile("GSE70138_Broad_LINCS_pert_info_2017-03-06.txt.gz", "compoundinfo"),
            ReleaseFile("GSE70138_Broad_LINCS_cell_info_2017-04-28.txt.gz", "cellinfo"),
            ReleaseFile("GSE70138_Broad_LINCS_inst_info_2017-03-06.txt.gz", "instinfo"),
        ],
    },
}
_TABLE_ROLES = ("siginfo", "geneinfo", "compoundinfo", "cellinfo", "instinfo")


def _release(name: str) -> dict:
    for key, rel in RELEASES.items():
        if key.lower() == str(name).lower():
            return {"name": key, **rel}
    raise InputError(f"unknown release {name!r}; known: {', '.join(RELEASES)}")


def release_files(release: str, patterns: list[str] | None = None) -> list[ReleaseFile]:
    """The catalog's files of ``release`` whose path, name or role matches a pattern
    (shell wildcards; default: the Level 5 matrices and every table)."""
    rel = _release(release)
    files = rel["files"]
    if not patterns:
        return [f for f in files if f.role == "level5" or f.role in _TABLE_ROLES]
    out = [
        f
        for f in files
        if any(
            fnmatch.fnmatch(f.path, p)
            or fnmatch.fnmatch(os.path.basename(f.path), p)
            or f.role == p
            for p in patterns
        )
    ]
    if not out:
        raise InputError(f"{rel['name']}: no file matches {' '.join(patterns)}")
    return out


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


def release_listing(release: str, patterns: list[str] | None = None) -> str:
    """The catalog as text: files grouped by role (Level 5, 4, 3, then the tables),
    largest first, each matrix's size (:attr:`ReleaseFile.size`), a subtotal per group
    and the total; ``*`` marks what :func:`download` fetches by default."""
    rel = _release(release)
    chosen = release_files(rel["name"], patterns or ["*"])
    default = set(release_files(rel["name"]))
    order = ("level5", "level4", "level3")
    groups: dict[str, list[ReleaseFile]] = {}
    for f in chosen:
        groups.setdefault(f.role if f.role in order else "tables", []).append(f)
    lines = [f"{rel['name']} ({rel['base_url']}); * = downloaded by default"]
    total = 0
    for role in (*order, "tables"):
        files = sorted(groups.get(role, []), key=lambda f: (-(f.size or 0), f.path))
        if not files:
            continue
        sub = sum(f.size or 0 for f in files)
        total += sub
        lines.append(f"{role} ({len(files)} files{', ' + _human(sub) if sub else ''}):")
        for f in files:
            size = _human(f.size) if f.size else "-"
            lines.append(f"  {'*' if f in default else ' '} {size:>9}  {f.path}")
    gz = any(f.path.endswith(".gz") for f in chosen if f.size)
    lines.append(
        f"total {_human(total)} of matrices"
        + (" (unpacked; the .gz files are smaller)" if gz else "")
        + "; tables (-) are text, small next to the matrices"
    )
    return "\n".join(lines)


def _base_url(release: dict, base_url: str | None) -> str:
    key = f"cmapdask.download.{release['name'].lower()}.base_url"
    return (base_url or dask.config.get(key, default=None) or release["base_url"]).rstrip("/")


def _say(quiet: bool, msg: str) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def _size(fs, url: str) -> int:
    try:
        return int(fs.size(url))
    except FileNotFoundError:  # the release or mirror named: rerunning will not help
        raise InputError(f"{url}: not on the server (check --base-url and --files)") from None
    except Exception as e:
        raise TransferError(f"{url}: cannot reach the server: {e}") from None


_MAGIC = {".gctx": b"\x89HDF\r\n\x1a\n", ".gz": b"\x1f\x8b"}


def _check_content(path: str, f: ReleaseFile, url: str) -> None:
    """What arrived can be what the catalog says: a matrix starts as HDF5 (or gzip), a
    table has a header of several tab-separated columns and at least one row. A size
    that matches the server's says nothing about a truncated or wrong file there."""
    name = f.path.lower()
    with open(path, "rb") as fh:
        head = fh.read(8)
    magic = next((m for ext, m in _MAGIC.items() if name.endswith(ext)), None)
    if magic is not None:
        ok = head.startswith(magic)
        what = "an HDF5 (GCTx) file" if magic == _MAGIC[".gctx"] else "a gzip file"
    elif f.role in _TABLE_ROLES:
        with open(path, "rb") as fh:
            lines = fh.read(1 << 16).splitlines()
        ok = len(lines) >= 2 and lines[0].count(b"\t") >= 1
        what = "a table (a tab-separated header and at least one row)"
    else:
        return
    if not ok:
        raise InputError(
            f"{url}: not {what} ({os.path.getsize(path)} bytes); refusing it as the "
            f"release's {f.role} file"
        )


def _fetch(
    fs, url: str, dest: str, *, expected: int | None, retries: int, quiet: bool, file=None
) -> None:
    """Copy ``url`` to ``dest`` through ``dest.part``, resuming after a cut connection;
    a ``file`` whose content cannot be its role is removed and refused."""
    part = dest + ".part"
    # what a cut connection can lose: the block in flight (the rest is on disk)
    block = max(4096, int(float(dask.config.get("cmapdask.download.block_mb", 8)) * 2**20))
    attempt = 0
    bar = None
    if not quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(
            total=expected, unit="B", unit_scale=True, desc=os.path.basename(dest), file=sys.stderr
        )
    try:
        while True:
            have = os.path.getsize(part) if os.path.exists(part) else 0
            if expected is not None and have > expected:
                os.remove(part)  # not a prefix of this file: start again
                have = 0
            if bar is not None:
                bar.n = have
                bar.refresh()
            if expected is not None and have == expected:
                break
            try:
                with fs.open(url, "rb", block_size=block) as src, open(part, "ab") as out:
                    if have:
                        src.seek(have)
                    while chunk := src.read(block):
                        out.write(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                if expected is None:
                    break
                if os.path.getsize(part) != expected:
                    raise OSError(f"short read: {os.path.getsize(part)} of {expected} bytes")
            except Exception as e:  # a cut connection, a timeout: resume from what arrived
                attempt += 1
                if attempt > retries:
                    raise TransferError(
                        f"{url}: transfer failed after {retries} retries: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                    ) from None
                _say(
                    quiet,
                    f"cmapdask: {os.path.basename(dest)}: {e}; resuming "
                    f"at {os.path.getsize(part) if os.path.exists(part) else 0} bytes",
                )
                time.sleep(min(2.0**attempt * 0.1, 5.0))
    finally:
        if bar is not None:
            bar.close()
    if file is not None:
        try:
            _check_content(part, file, url)
        except InputError:
            os.remove(part)  # ours, and wrong: nothing half-written is left
            raise
    os.replace(part, dest)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 * 2**20):
            h.update(chunk)
    return h.hexdigest()


def _check_dest_folder(dest) -> None:
    """DEST is a local folder (created if missing): a plain file there, or a place where
    no folder can be made, is refused in one line before anything is fetched."""
    from cmapdask.io.atomic import check_parent

    if os.path.lexists(dest) and not os.path.isdir(dest):
        raise InputError(f"{dest}: is a file, not a folder; downloads go into a folder")
    if not os.path.isdir(dest):
        check_parent(str(dest))


def download(
    release: str,
    dest,
    *,
    files: list[str] | None = None,
    base_url: str | None = None,
    storage_options: dict | None = None,
    convert_to=None,
    convert_storage_options: dict | None = None,
    retries: int = 5,
    quiet: bool = True,
) -> dict[str, str]:
    """Download a release's files into the folder ``dest``; optionally convert to a store.

    Parameters
    ----------
    release
        ``"LINCS2020"``, ``"GSE92742"`` or ``"GSE70138"``.
    files
        Shell patterns over the catalog's paths, names or roles (``level5``,
        ``siginfo``, ``*trt_cp*``); default the Level 5 matrices and the tables.
    base_url
        Where the release lives (``https://...`` or ``s3://bucket/prefix``; a mirror,
        or a local server in tests). Default: config, else the public location.
    storage_options
        fsspec options for the source (S3 is read without credentials unless given).
    convert_to
        A store URL: convert the (single) Level 5 matrix downloaded into it, with the
        release's tables joined (signatures of the matrix only).

    Returns
    -------
    dict
        Local path of each file by catalog path (``.gz`` matrices are unpacked).

    Notes
    -----
    A file already complete (same size as the server's) is not fetched again; a partial
    one (``NAME.part``) resumes with a ranged read. Memory: one 8 MiB block.
    """

    rel = _release(release)
    chosen = release_files(rel["name"], files)
    root = _base_url(rel, base_url)
    opts = dict(storage_options or {})
    if root.startswith("s3://") and not opts:
        opts = {"anon": True}
    fs, _ = url_to_fs(root, opts)
    _check_dest_folder(dest)
    sizes = {f.path: _size(fs, f"{root}/{f.path}") for f in chosen}  # before DEST is made
    made = not os.path.isdir(dest)
    os.makedirs(dest, exist_ok=True)
    try:
        return _download_all(
            rel, chosen, root, fs, dest, sizes, retries, quiet, convert_to, convert_storage_options
        )
    except BaseException:
        if made and not os.listdir(dest):  # the folder this run made, left empty
            os.rmdir(dest)
        raise


def _download_all(rel, chosen, root, fs, dest, sizes, retries, quiet, convert_to, convert_opts):
    out: dict[str, str] = {}
    for f in chosen:
        url = f"{root}/{f.path}"
        local = os.path.join(dest, os.path.basename(f.path))
        expected = sizes[f.path]
        if os.path.exists(local) and os.path.getsize(local) == expected:
            _say(quiet, f"cmapdask: {os.path.basename(local)}: already complete")
            _check_content(local, f, url)
        else:
            _say(quiet, f"cmapdask: fetching {url} ({expected / 1e6:.1f} MB)")
            _fetch(fs, url, local, expected=expected, retries=retries, quiet=quiet, file=f)
        if f.sha256 and _sha256(local) != f.sha256:
            os.replace(local, local + ".bad")
            raise TransferError(f"{local}: SHA-256 differs from the release's; moved aside")
        if f.role.startswith("level") and local.endswith(".gctx.gz"):
            unpacked = local[: -len(".gz")]
            if not os.path.exists(unpacked):
                _say(quiet, f"cmapdask: unpacking {os.path.basename(local)}")
                tmp = unpacked + ".part"
                with gzip.open(local, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 8 * 2**20)
                os.replace(tmp, unpacked)
            local = unpacked
        out[f.path] = local
    if convert_to is not None:
        _convert(rel, chosen, out, convert_to, convert_opts, quiet)
    return out


def _convert(rel, chosen, paths, store, storage_options, quiet) -> None:
    from cmapdask.io.store import convert

    matrices = [paths[f.path] for f in chosen if f.role.startswith("level")]
    if len(matrices) != 1:
        raise InputError(
            f"--convert needs exactly one matrix among the files, not {len(matrices)}; "
            "choose one with --files"
        )
    tables = {f.role: paths[f.path] for f in chosen if f.role in _TABLE_ROLES}
    _say(quiet, f"cmapdask: converting {os.path.basename(matrices[0])} into {store}")
    convert(
        matrices[0],
        store,
        sig_info=tables.get("siginfo"),
        gene_info=tables.get("geneinfo"),
        compound_info=tables.get("compoundinfo"),
        cell_info=tables.get("cellinfo"),
        inst_info=tables.get("instinfo"),
        extra_ids="ignore",
        storage_options=storage_options,
        progress=not quiet,
    )
