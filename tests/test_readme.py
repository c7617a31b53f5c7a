"""The README's examples run as printed, and it links every page a researcher needs.

The rule: every code block fenced as ```python is a complete program, run exactly as printed
(each in a fresh interpreter, in a temporary directory). Sketches that need the reader's own
names (``params``, ``loss_fn``) are fenced as ```py and are not run.
"""
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
PYTHON_BLOCKS = re.findall(r"^```python\n(.*?)^```$", README, flags=re.MULTILINE | re.DOTALL)


def test_readme_has_a_short_runnable_example_of_a_foreign_model():
  section = README.split("## Prune your own JAX model", 1)[1].split("\n## ", 1)[0]
  [example] = re.findall(r"^```python\n(.*?)^```$", section, flags=re.MULTILINE | re.DOTALL)
  assert len([line for line in example.splitlines() if line.strip()]) <= 15


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_block_runs_as_printed(index, tmp_path):
  result = subprocess.run([sys.executable, "-c", PYTHON_BLOCKS[index]], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip()          # every example shows its result


@pytest.mark.parametrize("page", sorted(
    [p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")]
    + [p.relative_to(ROOT).as_posix() for p in (ROOT / "notebooks").glob("*.ipynb")]))
def test_readme_links_every_doc_and_notebook(page):
  assert f"]({page})" in README, f"README.md does not link {page}"
