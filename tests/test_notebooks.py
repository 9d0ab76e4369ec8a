"""The notebooks in ``notebooks/``: each runs top to bottom, and matches its jupytext pair.

Every ``notebooks/*.ipynb`` is executed with nbclient in a temporary directory
(a copy of the notebook, so nothing is written into the repository), on a kernel
of the interpreter running the tests. The ``.ipynb`` files are generated from
their ``.py`` (jupytext percent format) twins; both must hold the same cells,
and the committed ``.ipynb`` must carry no outputs.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
jupytext = pytest.importorskip("jupytext")
pytest.importorskip("ipykernel")

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
IPYNB = sorted(NOTEBOOKS.glob("*.ipynb"))
CELL_TIMEOUT = 300  # seconds per cell
KERNEL = "python3"


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A ``python3`` kernelspec that runs *this* interpreter, first on JUPYTER_PATH.

    jupyter_client already falls back to ipykernel's built-in ``python3`` spec
    (and runs a spec's bare ``python`` as ``sys.executable``), but a ``python3``
    spec elsewhere on the Jupyter path (a user's, a conda env's) may name another
    interpreter, one without mtl_jax. ``ipykernel.kernelspec.install`` writes a
    spec whose argv is ``sys.executable``; put first, it wins.
    """
    from ipykernel.kernelspec import install

    prefix = tmp_path_factory.mktemp("kernelspec")
    install(kernel_name=KERNEL, prefix=str(prefix))
    spec = json.loads((prefix / "share/jupyter/kernels" / KERNEL / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable
    patch = pytest.MonkeyPatch()
    patch.setenv("JUPYTER_PATH", str(prefix / "share/jupyter"))
    patch.delenv("MPLBACKEND", raising=False)  # ipykernel then picks the inline backend
    yield
    patch.undo()


def _ids(paths):
    return [p.stem for p in paths]


def test_there_are_notebooks():
    assert IPYNB, f"no notebooks found in {NOTEBOOKS}"


@pytest.mark.parametrize("path", IPYNB, ids=_ids(IPYNB))
def test_notebook_executes(path, tmp_path, kernel_env, monkeypatch):
    workdir, scratch = tmp_path / "run", tmp_path / "tmp"
    workdir.mkdir()
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # the kernel's tempfile files land here
    copy = shutil.copy(path, workdir / path.name)
    notebook = nbformat.read(copy, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=CELL_TIMEOUT, kernel_name=KERNEL,
        resources={"metadata": {"path": str(workdir)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as error:
        pytest.fail(f"{path.name} failed:\n{error}", pytrace=False)
    errors = [output for cell in notebook.cells if cell.cell_type == "code"
              for output in cell.get("outputs", []) if output.get("output_type") == "error"]
    assert not errors, f"{path.name}: cells raised {[e['ename'] for e in errors]}"
    figures = [output for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.get("outputs", []) if "image/png" in output.get("data", {})]
    assert figures, f"{path.name}: no figure was rendered"
    leftovers = sorted(p.name for p in workdir.iterdir() if p.name != path.name)
    assert not leftovers, f"{path.name} wrote into its working directory: {leftovers}"


def _cells(notebook):
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


@pytest.mark.parametrize("path", IPYNB, ids=_ids(IPYNB))
def test_notebook_matches_its_py_pair(path):
    pair = path.with_suffix(".py")
    assert pair.exists(), (f"{path.name} has no paired {pair.name}; create it with "
                           f"`jupytext --set-formats ipynb,py:percent {path}`")
    from_py, from_ipynb = jupytext.read(pair), jupytext.read(path)
    assert _cells(from_ipynb) == _cells(from_py), (
        f"{path.name} and {pair.name} differ; after editing {pair.name}, regenerate with "
        f"`jupytext --to ipynb {pair}`")
    assert from_ipynb.metadata.get("kernelspec", {}).get("name") == KERNEL


@pytest.mark.parametrize("path", IPYNB, ids=_ids(IPYNB))
def test_notebook_is_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    dirty = [i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, (f"{path.name}: cells {dirty} hold outputs; strip them, e.g. "
                       f"`jupytext --to ipynb {path.with_suffix('.py')}`")
