"""The ``cmapdask`` command line.

Each command group lives in its own module (``cmapdask/cli/<group>.py``) with a
``register(subparsers)`` function; this module only assembles them and turns a
:class:`~cmapdask.errors.CmapdaskError` into one line on stderr and an exit code.

Exit codes:

- 0 success;
- 1 an unexpected failure (a bug: traceback shown);
- 2 bad input or options (including a missing scheduler file or malformed address);
- 75 a transient failure of infrastructure (``EX_TEMPFAIL``): a scheduler that is
  unreachable, refuses connections, dies or stalls, a storage server that times out
  (:class:`~cmapdask.errors.InfrastructureError`, and connection and timeout errors of the
  network, storage and Dask libraries); the same command may succeed when run again;
- 130 interrupted (Ctrl-C): temporaries removed, one line.

Run as a program, a failing command exits at once after its line (no waiting on stuck
threads of a frozen server, no asyncio noise at interpreter shutdown).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys

from cmapdask._version import __version__
from cmapdask.errors import CmapdaskError, InfrastructureError, InputError

__all__ = ["main", "build_parser"]

# Command groups, in the order `cmapdask --help` lists them.
COMMAND_MODULES = [
    "cmapdask.cli.store",
    "cmapdask.cli.synth",
    "cmapdask.cli.connectivity",
    "cmapdask.cli.similarity",
    "cmapdask.cli.levels",
    "cmapdask.cli.moa",
    "cmapdask.cli.targets",
    "cmapdask.cli.rebuild",
    "cmapdask.cli.data",
    "cmapdask.cli.demo",
    "cmapdask.cli.serve",
]


def _recall_moa_out(args):
    from cmapdask.cli.moa import _moa_out

    return _moa_out(args)


_DATA = (("store",), (), ("out",))
# What each command reads and writes, by argument name (a callable derives one): the
# destinations are checked here, once, before the command runs (io/atomic.py's rules):
# no output is, contains or lies inside an input; a folder or file output that exists is
# refused unless --overwrite, and then replaced only if cmapdask wrote it.
IO: dict[str, tuple[tuple, tuple, tuple]] = {
    "convert": (("src", "sig_info", "gene_info", "compound_info"), ("dest",), ()),
    "level4": (("src",), ("dest",), ()),
    "level5": (("src",), ("dest",), ()),
    "query": (("store", "up", "down"), ("out",), ()),
    "de-sets": (("table", "store"), (), ("out_up", "out_down")),
    "introspect": (("store",), ("out",), ()),
    "similarity": (("store", "ref", "query_ids"), ("out",), ("gctx",)),
    "cluster": (("store", "annotations"), (), ("table", "heatmap")),
    "enrich": (("source", "annotations"), (), ("out", "pcl_gmt", "running_sum")),
    "recall": (("store", "ref", "annotations"), (), ("out", _recall_moa_out, "roc")),
    "targets": (("store",), (), ("out",)),
    **{c: _DATA for c in ("sigs", "compounds", "genes", "cells", "genetic-perts", "moas", "sql")},
}


def _value(args, key):
    return key(args) if callable(key) else getattr(args, key, None)


def _label(key) -> str:
    return "moa_out" if callable(key) else key


def _check_io(args) -> contextlib.AbstractContextManager:
    """Refuse outputs that overlap inputs or may not be replaced, before any work;
    returns the context in which the command's writers apply the file rules."""
    from cmapdask.io import atomic

    ins, dirs, files = IO.get(args.command, ((), (), ()))
    if not (dirs or files):
        return contextlib.nullcontext()
    so = getattr(args, "storage_options", None)
    overwrite = bool(getattr(args, "overwrite", False))
    inputs = {k: _value(args, k) for k in ins}
    if args.command == "similarity" and not getattr(args, "out", None):
        inputs.pop("store")  # a member of STORE is the output: written inside it by design
    outputs = {_label(k): _value(args, k) for k in (*dirs, *files)}
    atomic.refuse_overlap(outputs, inputs)
    for key in dirs:  # before a cluster starts or anything is read
        if (dest := _value(args, key)) is not None:
            atomic.check_destination(dest, storage_options=so, overwrite=overwrite)
    paths = [str(v) for k in files if (v := _value(args, k)) is not None]
    for path in paths:
        atomic.check_file_destination(path, storage_options=so, overwrite=overwrite)
    if len(set(paths)) < len(paths):
        raise InputError(f"{paths[0]}: the same file is given for two outputs")
    return atomic.user_files(paths, overwrite=overwrite)


def _add_overwrite(parser) -> None:
    if not any("--overwrite" in a.option_strings for a in parser._actions):
        parser.add_argument(
            "--overwrite",
            action="store_true",
            help="replace output files cmapdask wrote (their .NAME.cmapdask record "
            "matches them; never another file or a folder)",
        )


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own exit code is already 2; keep it one line
        self.exit(2, f"cmapdask: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cmapdask",
        description="Connectivity Map analysis at cluster scale (GCTx/Zarr, queries, similarity).",
    )
    parser.add_argument("--version", action="version", version=f"cmapdask {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # a command group not built yet
                continue
            raise
        module.register(sub)
    for command, (_, _, files) in IO.items():
        if files and command in sub.choices:
            _add_overwrite(sub.choices[command])
    return parser


EXIT_TRANSIENT = 75


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _run(args) -> int:
    from cmapdask.cli import runtime

    try:
        with _check_io(args):
            return int(args.func(args) or 0)
    except InfrastructureError as e:
        print(f"cmapdask: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_TRANSIENT
    except CmapdaskError as e:
        print(f"cmapdask: error: {_one_line(e)}", file=sys.stderr)
        # an error about an input that arose from a timeout or a lost connection (e.g. a
        # store that could not be read from a frozen server) is transient, not bad input
        return EXIT_TRANSIENT if runtime._is_transient(e) else 2
    except KeyboardInterrupt:
        if runtime.last_failure:  # the watchdog's interrupt, landed late
            print(f"cmapdask: error: {_one_line(runtime.last_failure)}", file=sys.stderr)
            return EXIT_TRANSIENT
        print("cmapdask: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if not runtime._is_transient(e):
            raise
        print(
            f"cmapdask: error: transient failure (network, storage or cluster): "
            f"{_one_line(runtime._first_line(e))}",
            file=sys.stderr,
        )
        return EXIT_TRANSIENT


def _quiet_shutdown() -> None:
    """No asyncio/aiohttp noise when the interpreter ends ("Task was destroyed",
    "created in a different Context"): our line was the last word."""
    import logging

    logging.getLogger("asyncio").setLevel(logging.CRITICAL + 1)
    sys.unraisablehook = lambda unraisable: None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    rc = _run(args)
    _quiet_shutdown()
    if argv is None and rc not in (0, 1):
        # run as a program and failed: exit now, not after joining threads that may be
        # blocked on a frozen server (bounded time), and with no shutdown noise
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
