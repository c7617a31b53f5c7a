"""The notebooks in notebooks/ run top to bottom without edits (on the CPU, at smoke size).

Each runs in a fresh kernel (this interpreter's ``python3`` kernel, with the suite's environment:
XLA flags, compilation cache, classifier cache) whose working directory is a temporary folder,
so their workdirs never land in the repository.
"""
import pathlib
import time

import nbformat
import pytest
from nbclient import client

from tests import conftest

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
# Appended to the quickstart: its accelerator config, which the CPU never runs, is valid.
CHECK_ACCELERATOR_CONFIG = """
from lth_jax import validation
for platform, count in (("gpu", 1), ("tpu", 8)):
  accelerator = search_config(platform, count)
  validation.check(accelerator, "find_tickets")
  assert len(accelerator.tickets.seeds) == max(4, count)
"""


def _execute(name: str, directory: pathlib.Path, extra_cells=()) -> nbformat.NotebookNode:
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  nb.cells += [nbformat.v4.new_code_cell(source) for source in extra_cells]
  start = time.perf_counter()
  client.NotebookClient(nb, timeout=300, kernel_name="python3",
                        resources={"metadata": {"path": str(directory)}}).execute()
  print(f"{name}: {time.perf_counter() - start:.1f} s")
  return nb


def _text(nb: nbformat.NotebookNode) -> str:
  return "\n".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.get("outputs", []))


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_notebook_is_committed_without_outputs(name):
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  nbformat.validate(nb)
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None, (name, cell.source[:60])


@conftest.needs_fmnist
def test_quickstart_runs(tmp_path):
  nb = _execute("quickstart.ipynb", tmp_path, [CHECK_ACCELERATOR_CONFIG])
  workdir = tmp_path / "workdirs" / "quickstart_cpu"
  for written in ("results.csv", "summary.md", "metric_vs_sparsity.png", "samples_level1.png",
                  "metrics.jsonl", "level_01/ticket_seed0/masks.npz"):
    assert (workdir / written).exists(), written
  images = [out for cell in nb.cells for out in cell.get("outputs", [])
            if "image/png" in out.get("data", {})]
  assert len(images) == 3                      # the plot and two sample grids, inline
  assert "TOTAL" in _text(nb)                  # the ticket's mask summary


def test_prune_your_model_runs(tmp_path):
  nb = _execute("prune_your_model.ipynb", tmp_path)
  text = _text(nb)
  assert text.count("every pruned weight is exactly 0.0") == 2      # linen and nnx
  assert "hidden/kernel" in text and "Conv_0/kernel" in text
  assert (tmp_path / "mlp_ticket.npz").exists()
