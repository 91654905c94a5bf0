"""The notebooks in notebooks/: committed without outputs, described by their first cell, and
executed top to bottom by a real Jupyter kernel (nbclient) in CI mode (`SAM_JAX_NOTEBOOK_CI=1`:
CPU, the tiny model, no downloads), each in a temporary working directory, with the
random-weight `.pth` that the notebooks read there written first. A cell that raises fails
its test."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CI_VARIABLE = "SAM_JAX_NOTEBOOK_CI"
CELL_TIMEOUT_S = 900  # per cell, generous for a loaded 2-core CI machine

# Files each notebook must have written into its working directory in CI mode: evidence
# that the work ran, beyond the absence of errors.
EXPECTED_FILES = {
    "quickstart": ["sam_tiny_random.pth"],
    "train_from_scratch": [
        "workdir/tiny_from_scratch/metrics.jsonl",
        "workdir/tiny_from_scratch/eval.json",
        "workdir/tiny_from_scratch/sam_config.json",
    ],
    "finetune_tpu": [
        "sam_tiny_random.pth",
        "data/train/annotations.json",
        "workdir/finetune_tiny/metrics.jsonl",
        "workdir/finetune_tiny/checkpoints/20",
        "workdir/finetune_tiny/eval_before/results.json",
        "workdir/finetune_tiny/eval_after/results.json",
    ],
}


def _load(path: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    return nb


def _execute(nb: nbformat.NotebookNode, cwd: Path) -> None:
    """Run every cell in a fresh kernel of this interpreter, in `cwd`, in CI mode.

    Raises CellExecutionError on the first failing cell (nbclient's default).
    """
    env = {**os.environ, CI_VARIABLE: "1"}
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        startup_timeout=120,
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute(env=env)


def test_all_notebooks_are_here():
    assert {p.stem for p in NOTEBOOKS} == set(EXPECTED_FILES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    nb = _load(path)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {i} has outputs"
            assert cell.execution_count is None, f"cell {i} has an execution count"
        assert "execution" not in cell.metadata, f"cell {i} has execution timing metadata"
    assert "widgets" not in nb.metadata


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_cell_names_runtime_and_time(path):
    first = _load(path).cells[0]
    assert first.cell_type == "markdown"
    text = first.source
    assert text.startswith("# ")
    assert "**Runtime:**" in text and re.search(r"\b(TPU|GPU|CPU)\b", text)
    assert "**Time:**" in text and re.search(r"\d+ minutes?|a minute", text)
    assert "In CI" in text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_then_ci_overrides(path):
    cells = _load(path).cells
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters' (papermill)"
    (i,) = tagged
    assert cells[i].cell_type == "code"
    # The CI switch comes after the parameters (papermill inserts its cell right after them).
    following = cells[i + 1]
    assert following.cell_type == "code" and CI_VARIABLE in following.source


def test_kernel_is_this_interpreter_and_a_failing_cell_fails(tmp_path):
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(
                "import os, sys\n"
                "print(sys.executable)\n"
                f"print(os.environ[{CI_VARIABLE!r}])\n"
                "print(os.getcwd())"
            ),
            nbformat.v4.new_code_cell("raise ValueError('this cell fails')"),
            nbformat.v4.new_code_cell("print('never runs')"),
        ]
    )
    with pytest.raises(CellExecutionError, match="this cell fails"):
        _execute(nb, tmp_path)
    executable, ci_value, cwd = nb.cells[0].outputs[0]["text"].split()
    assert Path(executable).resolve() == Path(sys.executable).resolve()
    assert ci_value == "1"
    assert Path(cwd).resolve() == tmp_path.resolve()
    assert nb.cells[2].outputs == []


def test_evaluation_plot_keeps_the_pyplot_backend(tmp_path):
    # The finetune notebook runs an evaluation, then shows its own figures inline: writing
    # the evaluation's plot must not switch pyplot's backend (to Agg) under the notebook.
    # In a subprocess, so that this process's matplotlib state is left alone.
    script = f"""
import matplotlib
matplotlib.use("svg")
import matplotlib.pyplot as plt
from sam_jax.evaluation import report
results = {{
    "datasets": {{"a": {{"num_masks": 1, "miou": {{"1": 0.5, "2": 0.7}}}}}},
    "mean_over_datasets": {{"num_datasets": 1, "miou": {{"1": 0.5, "2": 0.7}}}},
}}
report.plot(results, (1, 2), {str(tmp_path / "plot.png")!r})
print(plt.get_backend())
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert out.stdout.split()[-1] == "svg"
    assert (tmp_path / "plot.png").stat().st_size > 1000


def _write_random_checkpoint(notebook: str, cwd: Path) -> None:
    """The official-format `.pth` a notebook's CI mode reads: random weights of the
    PyTorch reference (for the quickstart, shaped to give local masks worth drawing)."""
    import torch
    from reference import build_reference, localize_masks

    if notebook == "quickstart":
        reference = localize_masks(build_reference("tiny", seed=0, output_scale=3000.0))
    else:
        reference = build_reference("tiny", seed=0)
    torch.save(reference.state_dict(), cwd / "sam_tiny_random.pth")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_ci_mode(path, tmp_path):
    before = sorted(p.name for p in NOTEBOOK_DIR.iterdir())
    nb = _load(path)
    if "sam_tiny_random.pth" in EXPECTED_FILES[path.stem]:
        _write_random_checkpoint(path.stem, tmp_path)
    _execute(nb, tmp_path)

    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert not [o for o in cell.outputs if o.output_type == "error"], f"cell {i}"
        if "plt.show()" in cell.source:
            images = [o for o in cell.outputs if "image/png" in o.get("data", {})]
            assert images, f"cell {i} plots but showed no figure"
            for image in images:
                assert len(base64.b64decode(image["data"]["image/png"])) > 1000
    for name in EXPECTED_FILES[path.stem]:
        assert (tmp_path / name).exists(), f"{path.stem} did not write {name}"
    if path.stem == "train_from_scratch":
        lines = (tmp_path / EXPECTED_FILES[path.stem][0]).read_text().splitlines()
        assert [json.loads(line)["step"] for line in lines] == list(range(5, 41, 5))
    # Everything went to the temporary directory, nothing next to the notebooks.
    assert sorted(p.name for p in NOTEBOOK_DIR.iterdir()) == before
