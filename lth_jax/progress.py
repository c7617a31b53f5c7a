"""Training progress as people expect it: a live bar where someone watches, log lines elsewhere.

:class:`Progress` shows one training stage (a group of tickets going from one step to another):

* ``'terminal'``: a tqdm bar on stderr when stderr is a terminal,
  ``level 3: ticket:  45%|████▌     | 2250/5000 [01:02<01:16, 36.10 steps/s]``;
* ``'notebook'``: the same bar as a Jupyter widget (tqdm's notebook bar, which needs
  ``ipywidgets``: Colab has it, ``pip install -e '.[notebook]'`` installs it);
* ``'log'``: plain absl log lines at most once a minute,
  ``level 3: ticket, random_reinit: step 2250/5000 (45.0%), 36.1 steps/s, elapsed 0:01:02, ETA
  0:01:16`` (:class:`ProgressLogger`), when stderr is not a terminal (CI, a file,
  a pipe), in a notebook without ``ipywidgets``, and on every process but 0 of a multi-process
  run (only process 0 draws a bar).

The label names the stage and what it trains (the level and the branches of a lottery search),
so the bar says which of a search's many groups is running. Example::

  with progress.Progress(first_step=0, until_step=5000, label="level 3: ticket") as shown:
    for step in ...:
      shown.update(step)                     # absolute step reached
"""

from __future__ import annotations

import datetime
import importlib
import importlib.util
import sys
import time
from collections.abc import Callable
from typing import TextIO

import jax
from absl import logging
from tqdm import std as tqdm_std

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


def _duration(seconds: float) -> str:
  return str(datetime.timedelta(seconds=round(seconds)))


class ProgressLogger:
  """Logs ``step n/total (p%), r steps/s, ETA h:mm:ss`` at most every ``every_seconds``.

  The rate is measured since the previous line (the first interval includes compilation), so the
  ETA follows the current speed. The last step is always logged.

  Args:
    total_steps: number of steps this logger counts to.
    every_seconds: minimum wall-clock seconds between two lines.
    prefix: text put before each line (e.g. ``'level 3 ticket: '``).
    clock: seconds counter (``time.monotonic``; injectable for tests).
  """

  def __init__(self, total_steps: int, *, every_seconds: float = 60.0, prefix: str = "",
               clock: Callable[[], float] = time.monotonic):
    if total_steps < 0:
      raise ValueError(f"total_steps must be >= 0, got {total_steps}.")
    self.total_steps = int(total_steps)
    self.step = 0
    self._every = float(every_seconds)
    self._prefix = prefix
    self._clock = clock
    self._start = clock()
    self._last_step, self._last_time = 0, self._start

  def update(self, num_steps: int = 1) -> str | None:
    """Counts ``num_steps`` more steps; returns the logged line, or None if none was due."""
    self.step += int(num_steps)
    now = self._clock()
    finished = self.step >= self.total_steps
    if now - self._last_time < self._every and not finished:
      return None
    if self.step == self._last_step:
      return None
    rate = (self.step - self._last_step) / max(now - self._last_time, 1e-9)
    eta = max(self.total_steps - self.step, 0) / rate
    percent = 100.0 * self.step / max(self.total_steps, 1)
    line = (f"{self._prefix}step {self.step}/{self.total_steps} ({percent:.1f}%), "
            f"{rate:.3g} steps/s, elapsed {_duration(now - self._start)}, ETA {_duration(eta)}")
    logging.info(line)
    self._last_step, self._last_time = self.step, now
    return line


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
      self._log = ProgressLogger(max(int(until_step) - self._first, 0),
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
