"""The install: every import declared, bounds that CI tests, a light import, and the
README's commands working in the environment the README's own command installed."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
README = (ROOT / "README.md").read_text()
# the console script the install put beside this interpreter (not a PYTHONPATH copy)
CMAPDASK = Path(sys.executable).parent / "cmapdask"


def _requirements() -> dict[str, list[Requirement]]:
    """``{"": core, extra: [...]}`` from pyproject.toml."""
    p = PYPROJECT["project"]
    out = {"": [Requirement(r) for r in p["dependencies"]]}
    for extra, reqs in p["optional-dependencies"].items():
        out[extra] = [Requirement(r) for r in reqs]
    return out


def _declared(reqs) -> set[str]:
    return {canonicalize_name(r.name) for r in reqs if r.name != "cmapdask"}


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(top-level module, at module level?) for every absolute import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(n) for n in tree.body}
    # imports inside `if TYPE_CHECKING:` or try blocks at module level still count as top
    for n in tree.body:
        if isinstance(n, ast.If | ast.Try):
            top |= {id(c) for c in ast.walk(n)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        out += [(n.split(".")[0], id(node) in top) for n in names]
    return out


def _third_party(paths) -> dict[str, dict[str, bool]]:
    """module -> {file: imported at module level} for modules outside stdlib and cmapdask."""
    found: dict[str, dict[str, bool]] = {}
    for p in paths:
        for mod, at_top in _imports(p):
            if mod in sys.stdlib_module_names or mod in ("cmapdask", "__future__", "_version"):
                continue
            rel = str(p.relative_to(ROOT))
            found.setdefault(mod, {})
            found[mod][rel] = found[mod].get(rel, False) or at_top
    return found


def _distribution(module: str) -> str:
    dists = metadata.packages_distributions().get(module)
    assert dists, f"{module}: imported but no installed distribution provides it"
    return canonicalize_name(dists[0])


def test_every_import_of_the_package_is_declared():
    """A module-level import is a core dependency; one inside a function may be an extra's."""
    reqs = _requirements()
    core = _declared(reqs[""])
    anywhere = set().union(*(_declared(r) for r in reqs.values()))
    problems = []
    files = sorted((ROOT / "cmapdask").rglob("*.py"))
    for mod, where in sorted(_third_party(files).items()):
        dist = _distribution(mod)
        if dist not in anywhere:
            problems.append(f"{mod} ({dist}) is not declared; used in {sorted(where)}")
        elif dist not in core and any(where.values()):
            tops = sorted(f for f, t in where.items() if t)
            problems.append(f"{mod} ({dist}) is an extra's but imported at module level: {tops}")
    assert not problems, "\n".join(problems)


@pytest.mark.slow  # ~30 s; the package import test runs in CI
def test_every_import_of_the_scripts_is_declared():
    """workflows/, benchmarks/, docs/ and the tests import only declared packages."""
    anywhere = set().union(*(_declared(r) for r in _requirements().values()))
    files = [
        *sorted((ROOT / "workflows").rglob("*.py")),
        *sorted((ROOT / "benchmarks").rglob("*.py")),
        *sorted((ROOT / "docs").glob("*.py")),
        *sorted((ROOT / "tests").glob("*.py")),
    ]
    local = {"_generate", "_measure", "tests", "conftest", "nightly_rebuild"}
    missing = [
        f"{mod}: {sorted(where)}"
        for mod, where in sorted(_third_party(files).items())
        if mod not in local and _distribution(mod) not in anywhere
    ]
    assert not missing, "undeclared: " + "; ".join(missing)


def test_the_extras_name_features_the_errors_point_to():
    """Every ``require(module, extra, ...)`` names an extra that declares that module."""
    reqs = _requirements()
    bad = []
    for p in [*(ROOT / "cmapdask").rglob("*.py"), *(ROOT / "workflows").rglob("*.py")]:
        for m in re.finditer(r'require\(\s*"([\w.]+)",\s*"(\w+)"', p.read_text()):
            module, extra = m.groups()
            if extra not in reqs or _distribution(module.split(".")[0]) not in _declared(
                reqs[extra]
            ):
                bad.append(f"{p.name}: require({module!r}, {extra!r})")
    assert not bad, bad


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / ".ci" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_lower_bounds_are_the_versions_ci_tests():
    """Each declared lower bound is the pinned version CI runs the suite with."""
    pins = _pins()
    wrong = []
    for extra, reqs in _requirements().items():
        for r in reqs:
            if r.name == "cmapdask":
                continue
            lows = [s.version for s in r.specifier if s.operator == ">="]
            name = canonicalize_name(r.name)
            if lows != [pins.get(name)]:
                wrong.append(f"[{extra or 'core'}] {r}: CI pins {pins.get(name)}")
    assert not wrong, "\n".join(wrong)


def test_python_312_or_newer_everywhere():
    assert PYPROJECT["project"]["requires-python"] == ">=3.12"
    assert PYPROJECT["tool"]["ruff"]["target-version"] == "py312"
    docker = (ROOT / "cluster" / "docker" / "Dockerfile").read_text()
    assert "FROM python:3.12" in docker and "-c constraints.txt" in docker


def test_images_are_tagged_with_the_package_version():
    from cmapdask import __version__

    assert __version__ == PYPROJECT["project"]["version"]
    tags = set()
    for p in (ROOT / "cluster").rglob("*"):
        if p.is_file():
            tags |= set(re.findall(r"cmapdask-worker:([\w.-]+)", p.read_text()))
    assert tags == {__version__}


# ------------------------------------------------------------------------- the import


def _python(code: str, **env) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        check=True,
    )
    return out.stdout


def test_import_is_light_and_changes_nothing(tmp_path):
    """``import cmapdask`` loads none of the heavy parts and sets no other library's default,
    nor writes a configuration file."""
    code = """
import json, sys
import fsspec.config, s3fs
before = (json.dumps(fsspec.config.conf, sort_keys=True), s3fs.S3FileSystem.retries)
heavy0 = set(sys.modules)
import cmapdask
after = (json.dumps(fsspec.config.conf, sort_keys=True), s3fs.S3FileSystem.retries)
print(json.dumps({"same": before == after, "new": sorted(set(sys.modules) - heavy0)}))
"""
    out = json.loads(_python(code, DASK_CONFIG=str(tmp_path / "dask-config")))
    assert out["same"]
    heavy = ("numba", "h5py", "zarr", "xarray", "pyarrow", "fastapi", "matplotlib", "plotly")
    loaded = [m for m in out["new"] if m.split(".")[0] in heavy]
    assert not loaded, loaded
    assert not [m for m in out["new"] if m.startswith(("cmapdask.server", "cmapdask.cli"))]
    assert not (tmp_path / "dask-config").exists()


def test_lazy_api_is_the_same_api():
    code = """
import cmapdask, types
import cmapdask.similarity.api, cmapdask.rebuild.versions  # bind the subpackages
names = [n for n in cmapdask.__all__ if getattr(cmapdask, n) is None]
assert not names, names
assert callable(cmapdask.similarity) and callable(cmapdask.rebuild)
assert isinstance(cmapdask.errors, types.ModuleType)
import xarray as xr
assert hasattr(xr.Dataset(), "cmap")
print("ok")
"""
    assert _python(code).strip() == "ok"


def test_engine_discovery_does_not_load_the_heavy_parts():
    code = """
import json, sys
import xarray as xr
engines = xr.backends.list_engines()
print(json.dumps({"gctx": "gctx" in engines,
                  "loaded": [m for m in ("numba", "h5py", "s3fs", "fastapi") if m in sys.modules]}))
"""
    out = json.loads(_python(code))
    assert out == {"gctx": True, "loaded": []}


def test_storage_settings_reach_only_the_filesystems_cmapdask_opens():
    from cmapdask.config import storage_defaults, storage_options

    assert storage_options("/tmp/x", None) is None
    assert storage_options("memory://x", {"a": 1}) == {"a": 1}
    mine = storage_defaults()["config_kwargs"]
    got = storage_options("s3://b/x", {"config_kwargs": {"read_timeout": 5}, "anon": True})
    assert got["anon"] is True
    assert got["config_kwargs"] == {**mine, "read_timeout": 5}  # the caller's key wins


def test_require_names_the_extra():
    from cmapdask.errors import InputError, require

    assert require("json", "ml", "x").dumps([1]) == "[1]"
    with pytest.raises(InputError, match=r"pip install 'cmapdask\[ml\]'"):
        require("no_such_module_zz", "ml", "pictures")


# ---------------------------------------------------------------------- README commands


def _readme_block() -> list[str]:
    block = README.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_starts_with_the_two_commands_ci_runs():
    demo, tests = _readme_block()
    assert demo.startswith("python3.12 -m venv .venv && ")
    assert demo.endswith("pip install -e . && .venv/bin/cmapdask demo --force")
    create, install, run = tests.split(" && ")
    assert create == "python3.12 -m venv .venv"
    assert install == ".venv/bin/python -m pip install -e '.[test]' -c .ci/constraints.txt"
    assert run.startswith(".venv/bin/python -m pytest ")
    ci = (ROOT / ".ci" / "run").read_text()
    # .ci/run takes the command from the README, whichever line holds it
    assert "grep -m1 -F \"pip install -e '.[test]'\" README.md" in ci
    assert README.count("pip install -e '.[test]'") == 1
    assert 'eval "$tests"' in ci and 'eval "$install"' in ci


def _readme_commands() -> list[str]:
    """Every ``cmapdask X`` the README names (``sigs\\|compounds\\|...`` counts each)."""
    found = re.findall(r"`cmapdask ([a-z][a-z0-9-]+(?:\\\|[a-z][a-z0-9-]+)*)", README)
    return sorted({"demo"} | {c for group in found for c in group.split("\\|")})


def test_every_readme_command_has_help_in_the_installed_environment():
    assert CMAPDASK.exists(), f"{CMAPDASK}: the install made no console script"
    commands = _readme_commands()
    assert {"sql", "serve", "query", "sigs", "genetic-perts", "moas"} <= set(commands)
    for cmd in commands:
        r = subprocess.run(
            [str(CMAPDASK), cmd, "--help"], capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 0, (cmd, r.stderr[-2000:])
        assert "usage: cmapdask" in r.stdout and "Traceback" not in r.stderr, cmd


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    from tests._server_helpers import shared_store

    return shared_store(tmp_path_factory)


def test_sql_runs_in_the_installed_environment(tiny_store, tmp_path):
    r = subprocess.run(
        [str(CMAPDASK), "sql", tiny_store["store"], "SELECT count(*) AS n FROM siginfo"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert re.search(r"\b600\b", r.stdout), r.stdout


def test_serve_runs_in_the_installed_environment(tiny_store, tmp_path):
    import httpx

    from tests._server_helpers import free_port

    port = free_port()
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115
    cmd = [str(CMAPDASK), "serve", tiny_store["store"], "--port", str(port)]
    cmd += ["--jobs-dir", str(tmp_path / "jobs"), "--scheduler", "none"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        info = None
        for _ in range(600):
            if proc.poll() is not None:
                break
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/v1/info", timeout=2)
                if r.status_code == 200:
                    info = r.json()
                    break
            except httpx.HTTPError:
                pass
            import time

            time.sleep(0.2)
        assert info is not None, (tmp_path / "serve.log").read_text()[-3000:]
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert page.status_code == 200 and "<html" in page.text.lower()
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def test_the_docs_extra_holds_what_the_tutorials_import():
    """``pip install -e '.[docs]'`` is enough for the executed pages: every import in a code
    cell is core, the docs extra's, or an extra the docs extra pulls in."""
    reqs = _requirements()
    have = _declared(reqs[""]) | _declared(reqs["docs"])
    for r in reqs["docs"]:
        if r.name == "cmapdask":
            have |= set().union(*(_declared(reqs[e]) for e in r.extras))
    cells = []
    for page in (ROOT / "docs").rglob("*.md"):
        cells += re.findall(r"```\{code-cell\}[^\n]*\n(.*?)```", page.read_text(), re.S)
    mods = set()
    for cell in cells:
        code = "\n".join(x for x in cell.splitlines() if not x.startswith(("%", "!", ":")))
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods.add(node.module.split(".")[0])
    mods -= set(sys.stdlib_module_names) | {"cmapdask", "_generate", "__future__"}
    assert mods, "no imports found in the tutorials' code cells"
    # IPython comes with ipykernel, the notebook kernel the docs extra declares
    missing = sorted(m for m in mods if _distribution(m) not in have | {"ipython"})
    assert not missing, missing


def test_a_missing_extra_is_one_line_naming_it(tiny_store, tmp_path):
    """Without the ``ml`` extra's packages, graph clusters say which extra to install."""
    import shutil

    store = tmp_path / "store.zarr"
    shutil.copytree(tiny_store["store"], store)
    code = (
        "import sys\n"
        "for m in ('networkx', 'igraph', 'leidenalg'): sys.modules[m] = None\n"
        "from cmapdask.cli import main\n"
        "sys.exit(main())\n"
    )
    args = ["cluster", str(store), "--method", "graph", "--neighbours"]
    args += ["similarity/pearson_landmark", "--name", "g", "--scheduler", "none"]
    r = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "pip install 'cmapdask[ml]'" in lines[0], r.stderr
    assert not (store / "clusters").exists()
