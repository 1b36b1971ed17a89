"""Every notebook in notebooks/ runs top to bottom on fresh demo data, and is stored clean.

One pipeline run on 3,000 synthetic episodes is made per pytest session (shared by xdist
workers under a file lock); its processed folder is given to the notebooks through
``OUTCOMES_PROCESSED_DIR``. The notebooks are executed concurrently, each in its own
kernel (the ``python3`` kernelspec, which jupyter_client starts with this interpreter:
the project's venv), with a per-cell timeout; any error fails the test with the cell and
its traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from report_helpers import build_once
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from pipelines.research import PROCESSED_DIR_ENV

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
KERNEL = "python3"
CELL_TIMEOUT = 240          # seconds per cell (the slowest takes ~10 s alone)
STARTUP_TIMEOUT = 120
TOTAL_BUDGET = 170          # seconds for all notebooks together (they run concurrently)
N_EPISODES, SEED, TODAY = 3000, 42, "2026-11-27"


def _demo_run(folder: Path) -> dict:
    from pipelines.pipeline import run_pipeline
    from pipelines.synth import generate

    generate(N_EPISODES, SEED, folder / "raw")
    outcome = run_pipeline(raw_dir=folder / "raw", processed_dir=folder / "processed",
                           reports_dir=folder / "reports", today=TODAY)
    return {"processed": str(folder / "processed"), "success": outcome.success, "failure": outcome.failure}


@pytest.fixture(scope="session")
def demo_processed(tmp_path_factory) -> Path:
    run = build_once(tmp_path_factory, "notebooks_demo_3000", _demo_run)
    assert run["success"], f"the pipeline failed on the demo data: {run['failure']}"
    return Path(run["processed"])


@pytest.fixture(scope="session")
def kernel_name() -> str:
    """The ``python3`` kernelspec, installed into this venv if missing."""
    from jupyter_client.kernelspec import KernelSpecManager

    if KERNEL not in KernelSpecManager().find_kernel_specs():
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix"], check=True)
    return KERNEL


def _client(nb: nbformat.NotebookNode, kernel_name: str) -> NotebookClient:
    return NotebookClient(nb, kernel_name=kernel_name, timeout=CELL_TIMEOUT, startup_timeout=STARTUP_TIMEOUT,
                          resources={"metadata": {"path": str(NOTEBOOKS_DIR)}})


async def _run_all(paths: list[Path], kernel_name: str, env: dict) -> dict[str, tuple]:
    async def run(path: Path) -> tuple:
        nb = nbformat.read(path, as_version=4)
        started = time.perf_counter()
        try:
            await _client(nb, kernel_name).async_execute(env=env)
            error = None
        except CellExecutionError as exc:
            error = str(exc)
        except Exception as exc:  # kernel death, timeout
            error = f"{type(exc).__name__}: {exc}"
        return nb, error, time.perf_counter() - started

    results = await asyncio.gather(*(run(p) for p in paths))
    return {p.name: r for p, r in zip(paths, results)}


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream"
                   and o.get("name") == "stdout")


def test_there_are_the_four_numbered_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["1.0-condition-outcomes.ipynb", "2.0-sessions-needed.ipynb",
                                           "3.0-risk-adjusted-comparison.ipynb", "4.0-custom-cohort.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_clean_and_uses_the_package(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert re.fullmatch(r"\d+\.\d+-[a-z0-9-]+\.ipynb", path.name)
    assert nb.metadata["kernelspec"]["name"] == KERNEL
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code), "store notebooks without outputs"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert any(c.cell_type == "markdown" and c.source.startswith("## Conclusions") for c in nb.cells)
    source = "\n".join(c.source for c in code)
    assert "from pipelines import research" in source and "research.find_processed_dir()" in source
    # logic comes from the package: no metric is redefined in a notebook
    assert not re.search(r"def (episode_outcomes|condition_summary|summarise|wilson|kaplan)", source)


def test_the_kernel_is_this_python(kernel_name):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import sys; print(sys.prefix)")]
    _client(nb, kernel_name).execute()
    assert _stdout(nb.cells[0]).strip() == sys.prefix


def test_every_notebook_runs_top_to_bottom(demo_processed, kernel_name):
    env = {**os.environ, PROCESSED_DIR_ENV: str(demo_processed)}
    started = time.perf_counter()
    results = asyncio.run(_run_all(NOTEBOOKS, kernel_name, env))
    elapsed = time.perf_counter() - started
    failures = [f"{name} ({seconds:.0f}s):\n{error}" for name, (_, error, seconds) in results.items() if error]
    assert not failures, "\n\n".join(failures)
    for name, (nb, _, _) in results.items():
        # the setup cell read the fixture's folder, and the last cell printed computed conclusions
        setup = next(c for c in nb.cells if c.cell_type == "code")
        assert str(demo_processed) in _stdout(setup), name
        conclusions = _stdout([c for c in nb.cells if c.cell_type == "code"][-1])
        assert conclusions.startswith("- ") and conclusions.count("\n- ") >= 2, name
    checked = _stdout(next(c for c in results["1.0-condition-outcomes.ipynb"][0].cells
                           if "assert_frame_equal(summary" in c.source))
    assert checked.startswith("OK: the recomputed table equals"), checked
    timings = ", ".join(f"{name} {seconds:.0f}s" for name, (_, _, seconds) in results.items())
    assert elapsed < TOTAL_BUDGET, f"notebooks took {elapsed:.0f}s together ({timings})"
