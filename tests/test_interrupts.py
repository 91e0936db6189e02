"""Ctrl-C at three moments of `cmapdask convert` on a real local cluster: while the
cluster starts, mid-compute (a worker's first chunk written) and mid-publish (the
folder being swapped into place). Each exits 130 with one line, no traceback, and
leaves no temporaries and no half-written store; no worker outlives the command.

The SIGINT is sent by the fault checkpoints (``CMAPDASK_FAULT_SIGNAL=INT``,
cmapdask/rebuild/faults.py) at exactly that moment, so nothing here races a timer.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from cmapdask.io.gctx import write_gctx
from cmapdask.synthetic import synth_dataset, synth_design

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gctx(tmp_path_factory):
    path = tmp_path_factory.mktemp("interrupts") / "ok.gctx"
    write_gctx(synth_dataset(synth_design(60, seed=2), metadata="tables").compute(), path)
    return path


def _holders(mark: str) -> list[int]:
    """Live processes whose environment holds ``mark`` (the command and its workers)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if mark.encode() in f.read():
                    out.append(int(pid))
        except OSError:
            continue
    return out


@pytest.mark.parametrize(
    "moment,published",
    [
        pytest.param("cluster:1", False, marks=[pytest.mark.slow, pytest.mark.slow_ci]),
        pytest.param("write:1", False, marks=pytest.mark.slow),
        pytest.param("publish:1", True, marks=pytest.mark.slow),
    ],
    ids=["cluster-start", "mid-compute", "mid-publish"],
)
def test_sigint_exits_130_in_one_line_and_leaves_no_temporaries(gctx, tmp_path, moment, published):
    work = tmp_path / "work"
    work.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "CMAPDASK_FAULT_SIGNAL": "INT",
        "CMAPDASK_FAULT_KILL": moment,
    }
    env.pop("CMAPDASK_FAULT_PID", None)
    mark = f"CMAPDASK_TEST_MARK={uuid.uuid4().hex}"
    env[mark.split("=")[0]] = mark.split("=")[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cmapdask", "convert", gctx, work / "x.zarr"]
        + ["--scheduler", "local", "--workers", "1", "--quiet"],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, err = proc.communicate(timeout=240)
    lines = [x for x in err.splitlines() if x.strip()]
    assert proc.returncode == 130, err
    assert lines == ["cmapdask: interrupted"], err
    deadline = time.monotonic() + 20  # workers never outlive their command
    while _holders(mark) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _holders(mark) == []
    names = sorted(p.name for p in work.iterdir())
    # mid-publish: the swap is one step the interrupt waits for, so the store is whole
    assert names == (["x.zarr"] if published else []), names
    if published:
        import cmapdask

        assert cmapdask.open_store(str(work / "x.zarr")).sizes["sig"] == 60
