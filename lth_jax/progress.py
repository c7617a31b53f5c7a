"""Training progress as people expect it: a live bar where someone watches, log lines elsewhere.

:class:`Progress` shows one training stage (a group of tickets going from one step to another):

* ``'terminal'``: a tqdm bar on stderr when stderr is a terminal,
  ``level 3: ticket:  45%|████▌     | 2250/5000 [01:02<01:16, 36.10 steps/s]``;
* ``'notebook'``: the same bar as a Jupyter widget (tqdm's notebook bar, which needs
  ``ipywidgets``: Colab has it, ``pip install -e '.[notebook]'`` installs it);
* ``'log'``: plain absl log lines at most once a minute,
  ``level 3: ticket, random_reinit: step 2250/5000 (45.0%), 36.1 steps/s, elapsed 0:01:02, ETA
  0:01:16`` (:class:`lth_jax.report.ProgressLogger`), when stderr is not a terminal (CI, a file,
  a pipe), in a notebook without ``ipywidgets``, and on every process but 0 of a multi-process
  run (only process 0 draws a bar).

The label names the stage and what it trains (the level and the branches of a lottery search),
so the bar says which of a search's many groups is running. Example::

  with progress.Progress(first_step=0, until_step=5000, label="level 3: ticket") as shown:
    for step in ...:
      shown.update(step)                     # absolute step reached
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import TextIO

import jax
from tqdm import std as tqdm_std

from lth_jax import report

# The bar's text: steps/s never inverted to s/step, so slow and fast runs read alike.
BAR_FORMAT = ("{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, "
              "{rate_noinv_fmt}{postfix}]")


def _in_jupyter_kernel() -> bool:
  ipython = sys.modules.get("IPython")
  shell = ipython.get_ipython() if ipython is not None else None
  return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def choose(stream: TextIO | None = None) -> str:
  """How progress is shown here: ``'notebook'``, ``'terminal'`` or ``'log'`` (module docstring).

  Args:
    stream: where a terminal bar would be drawn (default ``sys.stderr``).
  """
  stream = sys.stderr if stream is None else stream
  if jax.process_index() != 0:
    return "log"
  if _in_jupyter_kernel() and importlib.util.find_spec("ipywidgets") is not None:
    return "notebook"
  isatty = getattr(stream, "isatty", None)
  return "terminal" if isatty is not None and isatty() else "log"


class Progress:
  """The progress of one stage from ``first_step`` to ``until_step``; a context manager.

  Args:
    first_step: the step the stage starts (or resumes) at.
    until_step: the step it trains to.
    label: what is trained, e.g. ``'level 3: ticket, random_reinit'``.
    stream: the terminal bar's stream (default ``sys.stderr``); it also decides
      :func:`choose`.
  """

  def __init__(self, first_step: int, until_step: int, *, label: str = "",
               stream: TextIO | None = None):
    stream = sys.stderr if stream is None else stream
    self.mode = choose(stream)
    self._first = int(first_step)
    self._bar = self._log = None
    if self.mode == "log":
      self._log = report.ProgressLogger(max(int(until_step) - self._first, 0),
                                        prefix=f"{label}: " if label else "")
    else:
      # tqdm's notebook module imports IPython: only where a notebook bar is drawn.
      bar = (importlib.import_module("tqdm.notebook").tqdm if self.mode == "notebook"
             else tqdm_std.tqdm)
      self._bar = bar(total=int(until_step), initial=self._first, desc=label, unit=" steps",
                      bar_format=BAR_FORMAT, file=stream, dynamic_ncols=True)

  def update(self, step: int) -> None:
    """Shows that the stage reached (absolute) ``step``."""
    if self._bar is not None:
      self._bar.update(int(step) - self._bar.n)
    else:
      self._log.update(int(step) - self._first - self._log.step)

  def close(self) -> None:
    """Leaves the finished bar on screen (a no-op for log lines)."""
    if self._bar is not None:
      self._bar.close()

  def __enter__(self) -> Progress:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
