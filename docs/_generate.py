"""Reference pages made from the code at build time, so they never drift from it.

- ``reference/api.md``: every name in ``cmapdask.__all__``, grouped by the module that
  defines it, documented from its docstring; every function and class of the
  subpackages' own APIs (``SUBMODULES``: ``cmapdask.data``, its downloads); plus the
  ``ds.cmap`` accessor.
- ``reference/config.md``: every configuration key with its default, from the package's
  own ``cmapdask.yaml``.
"""

from __future__ import annotations

import inspect
import json
from collections import defaultdict
from pathlib import Path

import yaml

HERE = Path(__file__).parent
PACKAGE = HERE.parent / "cmapdask"
# public APIs used as ``cmapdask.data.sigs(...)``, not from the top level
SUBMODULES = ("cmapdask.data", "cmapdask.data.download")


def _write(path: Path, text: str) -> None:
    # only touch the file when it changes, so Sphinx's incremental builds stay incremental
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _directive(obj) -> str:
    if inspect.isclass(obj):
        return "autoexception" if issubclass(obj, BaseException) else "autoclass"
    return "autofunction"


def submodule_names(module: str) -> list[str]:
    """The functions and classes of ``module.__all__`` (constants are not documented)."""
    import importlib

    mod = importlib.import_module(module)
    return [n for n in mod.__all__ if callable(getattr(mod, n))]


def api_page() -> str:
    import importlib

    import cmapdask

    groups: dict[str, list[str]] = defaultdict(list)
    for name in cmapdask.__all__:
        if name.startswith("__"):
            continue
        obj = getattr(cmapdask, name)
        groups[obj.__module__].append(name)
    out = [
        "# Python API",
        "",
        "Every public name of the package (`cmapdask.__all__`), grouped by the module that",
        "defines it. Import them from the top level: `from cmapdask import query`.",
        "",
    ]
    for module in sorted(groups):
        out += [f"## `{module}`", ""]
        for name in groups[module]:
            kind = _directive(getattr(cmapdask, name))
            # eval-rst: autodoc emits reStructuredText, which MyST would render as text
            out += ["```{eval-rst}", f".. {kind}:: cmapdask.{name}", "```", ""]
    for module in SUBMODULES:
        doc = (importlib.import_module(module).__doc__ or "").strip().split("\n\n")[0]
        out += [f"## `{module}`", "", " ".join(doc.split()), ""]
        for name in submodule_names(module):
            kind = _directive(getattr(importlib.import_module(module), name))
            out += ["```{eval-rst}", f".. {kind}:: {module}.{name}", "```", ""]
    out += [
        "## The `ds.cmap` accessor",
        "",
        "Every signature dataset (`xarray.Dataset` with `expr` over `(sig, gene)`) carries",
        "these methods once `cmapdask` is imported; each gives exactly what the function of",
        "the same name gives.",
        "",
        "```{eval-rst}",
        ".. autoclass:: cmapdask.accessor.CmapAccessor",
        "   :members:",
        "```",
        "",
    ]
    return "\n".join(out)


def _flatten(prefix: str, node, rows: list[tuple[str, str]]) -> None:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            _flatten(f"{prefix}.{key}" if prefix else key, value, rows)
    else:
        # JSON: one line per value (yaml.safe_dump ends a scalar with "...")
        rows.append((prefix, json.dumps(node, ensure_ascii=False)))


def config_page() -> str:
    text = (PACKAGE / "cmapdask.yaml").read_text()
    rows: list[tuple[str, str]] = []
    _flatten("", yaml.safe_load(text), rows)
    out = [
        "# Configuration",
        "",
        "Defaults live in Dask's configuration under the `cmapdask` namespace, so a cluster",
        "operator sets them in a YAML file (`~/.config/dask/cmapdask.yaml`) or in environment",
        "variables: `cmapdask.store.chunk_mb` is `DASK_CMAPDASK__STORE__CHUNK_MB`.",
        "",
        "| key | default | environment variable |",
        "|---|---|---|",
    ]
    for key, value in rows:
        env = "DASK_" + key.upper().replace(".", "__").replace("-", "_")
        out.append(f"| `{key}` | `{value}` | `{env}` |")
    out += [
        "",
        "The file itself, with its comments:",
        "",
        "```{literalinclude} ../../cmapdask/cmapdask.yaml",
        ":language: yaml",
        "```",
        "",
    ]
    return "\n".join(out)


def write_all() -> None:
    ref = HERE / "reference"
    ref.mkdir(exist_ok=True)
    _write(ref / "api.md", api_page())
    _write(ref / "config.md", config_page())
