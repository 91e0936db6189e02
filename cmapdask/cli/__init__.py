"""The ``cmapdask`` command line.

Each command group lives in its own module (``cmapdask/cli/<group>.py``) with a
``register(subparsers)`` function; this module only assembles them and turns a
:class:`~cmapdask.errors.CmapdaskError` into one line on stderr and exit code 2.
Exit codes: 0 success, 1 an unexpected failure (a bug: traceback shown), 2 bad input or
options, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cmapdask import __version__
from cmapdask.errors import CmapdaskError

__all__ = ["main", "build_parser"]

# Command groups, in the order `cmapdask --help` lists them.
COMMAND_MODULES = [
    "cmapdask.cli.store",
    "cmapdask.cli.synth",
    "cmapdask.cli.connectivity",
    "cmapdask.cli.similarity",
    "cmapdask.cli.levels",
    "cmapdask.cli.moa",
    "cmapdask.cli.rebuild",
    "cmapdask.cli.demo",
    "cmapdask.cli.serve",
]


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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except CmapdaskError as e:
        print(f"cmapdask: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cmapdask: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
