"""Every file in cluster/ parses and refers only to things that exist."""

from __future__ import annotations

import re
import runpy
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cmapdask.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
FILES = sorted(p for p in CLUSTER.rglob("*") if p.is_file())
SHELL = {".sh", ".sbatch", ".pbs"}
DOCKER = {
    "FROM",
    "RUN",
    "CMD",
    "LABEL",
    "EXPOSE",
    "ENV",
    "ADD",
    "COPY",
    "ENTRYPOINT",
    "VOLUME",
    "USER",
    "WORKDIR",
    "ARG",
    "ONBUILD",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "SHELL",
}
WORKFLOW = REPO / "workflows" / "nightly_rebuild.py"


def _kind(p: Path) -> str:
    if p.name == "Dockerfile":
        return "docker"
    if p.suffix in (".yaml", ".yml"):
        return "yaml"
    if p.suffix in SHELL:
        return "shell"
    if p.suffix == ".md":
        return "markdown"
    return "unknown"


def _workflow_parser():
    return runpy.run_path(str(WORKFLOW))["build_parser"]()


def _check_command(tokens: list[str], where: str) -> None:
    """``cmapdask SUB ...`` and ``python .../workflows/X.py ...`` must parse."""
    # shell variables stand for values: a JSON object where JSON is expected
    tokens = [
        ("{}" if i and tokens[i - 1] == "--storage-options" else "X") if "$" in t else t
        for i, t in enumerate(tokens)
    ]
    for i, t in enumerate(tokens):
        if t == "cmapdask" and i + 1 < len(tokens):
            build_parser().parse_args(tokens[i + 1 :])
            return
        if t.endswith(".py") and "workflows/" in t:
            assert (REPO / "workflows" / Path(t).name).is_file(), f"{where}: {t} missing"
            _workflow_parser().parse_args(tokens[i + 1 :])
            return


def _shell_commands(text: str) -> list[list[str]]:
    text = text.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if "nightly_rebuild.py" in line or re.search(r"(^|\s)cmapdask\s", line):
            out.append(shlex.split(line.replace('"${args[@]}"', "")))
    return out


def _containers(doc):
    if isinstance(doc, dict):
        if "image" in doc and "name" in doc:
            yield doc
        for v in doc.values():
            yield from _containers(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from _containers(v)


def test_every_file_has_a_known_kind():
    assert FILES
    assert not [p for p in FILES if _kind(p) == "unknown"]
    kinds = {_kind(p) for p in FILES}
    assert {"docker", "yaml", "shell", "markdown"} <= kinds


@pytest.mark.parametrize("path", [p for p in FILES if _kind(p) == "yaml"], ids=lambda p: p.name)
def test_yaml_parses(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs
    for doc in docs:
        for c in _containers(doc):
            cmd = [*c.get("command", []), *c.get("args", [])]
            if cmd[:2] == ["sh", "-c"]:
                for line in cmd[2:]:
                    _check_command(shlex.split(line), path.name)
            else:
                _check_command(cmd, path.name)
            if "workflows/nightly_rebuild.py" in " ".join(cmd):
                # the image copies workflows/ to /opt/cmapdask (Dockerfile)
                assert "/opt/cmapdask/workflows/" in " ".join(cmd)


def test_kubernetes_manifests():
    kinds = {}
    for p in (CLUSTER / "kubernetes").glob("*.yaml"):
        for d in yaml.safe_load_all(p.read_text()):
            kinds[d["kind"]] = d
    assert {"DaskCluster", "DaskJob", "CronJob", "DaskAutoscaler"} <= set(kinds)
    for k in ("DaskCluster", "DaskJob", "DaskAutoscaler"):
        assert kinds[k]["apiVersion"] == "kubernetes.dask.org/v1"
    cron = kinds["CronJob"]
    assert cron["apiVersion"] == "batch/v1" and len(cron["spec"]["schedule"].split()) == 5
    # the CronJob attaches to the DaskCluster's scheduler service
    args = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    addr = args[args.index("--scheduler") + 1]
    assert addr.startswith(f"tcp://{kinds['DaskCluster']['metadata']['name']}-scheduler.")
    assert kinds["DaskAutoscaler"]["spec"]["cluster"] == kinds["DaskCluster"]["metadata"]["name"]


def test_dask_config_keys_exist():
    import dask

    import cmapdask.config  # noqa: F401  (registers defaults)

    local = yaml.safe_load((CLUSTER / "local" / "cmapdask.yaml").read_text())

    def walk(d, prefix):
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                walk(v, key)
            else:
                assert dask.config.get(key, default="<missing>") != "<missing>", key

    walk(local, "")
    for sched in ("slurm", "pbs"):
        cfg = yaml.safe_load((CLUSTER / sched / "jobqueue.yaml").read_text())
        assert set(cfg["jobqueue"]) == {sched}
        assert {"cores", "memory", "processes", "walltime"} <= set(cfg["jobqueue"][sched])


@pytest.mark.parametrize("path", [p for p in FILES if _kind(p) == "shell"], ids=lambda p: p.name)
def test_shell_scripts_parse_and_call_real_commands(path):
    bash = shutil.which("bash")
    r = subprocess.run([bash, "-n", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cmds = _shell_commands(path.read_text())
    assert cmds, "a batch script must run the nightly job"
    for tokens in cmds:
        _check_command(tokens, path.name)
    text = path.read_text()
    for ref in re.findall(r"\$REPO/([\w./-]+)", text):
        assert (REPO / ref).exists(), f"{path.name}: {ref} missing"
    # the arguments the script builds in args=(...) are options of the workflow
    for m in re.findall(r"args(?:\+)?=\(([^)]*)\)", text):
        _workflow_parser().parse_args(
            ["X", *["X" if "$" in t else t for t in shlex.split(m)][1 if "ROOT" in m else 0 :]]
        )


def test_dockerfile_instructions_and_sources():
    path = CLUSTER / "docker" / "Dockerfile"
    lines = path.read_text().replace("\\\n", " ").splitlines()
    instr = [ln.split()[0] for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    assert instr[0] == "FROM" and set(instr) <= DOCKER
    for ln in lines:
        parts = ln.split()
        if parts and parts[0] in ("COPY", "ADD"):
            for src in parts[1:-1]:
                assert (REPO / src).exists(), f"Dockerfile: {src} missing in the build context"
        if parts and parts[0] == "CMD":
            assert "dask" in ln


def test_readme_references_exist():
    text = (CLUSTER / "README.md").read_text()
    refs = set(re.findall(r"`((?:cluster|workflows)/[\w./-]+)`", text))
    assert refs
    for ref in refs:
        assert (REPO / ref).exists(), ref
    sub = {a for a in re.findall(r"`cmapdask (\w+)", text)}
    assert {"append", "rebuild"} <= sub
    for s in sub:
        assert s in build_parser()._subparsers._group_actions[0].choices, s
