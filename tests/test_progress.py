"""Progress: a bar with steps/s and ETA on a terminal, plain log lines anywhere else."""
import importlib.util
import io
import logging

import jax
import pytest

from lth_jax import groups
from lth_jax import progress
from lth_jax import runs


class _Terminal(io.StringIO):
  """A stream that says it is a terminal."""

  def isatty(self):
    return True


def _run(stream, first=0, until=10, label="level 3: ticket, random_reinit"):
  with progress.Progress(first, until, label=label, stream=stream) as shown:
    for step in range(first + 1, until + 1):
      shown.update(step)
  return shown


def test_terminal_gets_a_bar_with_label_rate_and_eta():
  stream = _Terminal()
  assert _run(stream).mode == "terminal"
  text = stream.getvalue()
  last = text.rstrip("\n").split("\r")[-1]
  assert last.startswith("level 3: ticket, random_reinit: 100%|")
  assert "| 10/10 [" in last and "<00:00" in last and " steps/s]" in last


def test_resumed_bar_starts_at_the_resumed_step():
  stream = _Terminal()
  with progress.Progress(4, 10, label="level 1: ticket", stream=stream):
    pass
  assert "| 4/10 [" in stream.getvalue()


def test_no_terminal_gets_log_lines_and_no_control_characters(caplog):
  stream = io.StringIO()
  with caplog.at_level(logging.INFO):
    assert _run(stream).mode == "log"
  assert stream.getvalue() == ""
  lines = [r.getMessage() for r in caplog.records]
  assert any(line.startswith("level 3: ticket, random_reinit: step 10/10 (100.0%), ")
             and "steps/s" in line and "ETA" in line for line in lines), lines
  assert not any("\r" in line for line in lines)


def test_only_process_zero_draws_a_bar(monkeypatch):
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  assert progress.choose(_Terminal()) == "log"


def test_notebook_bar_needs_ipywidgets(monkeypatch):
  monkeypatch.setattr(progress, "_in_jupyter_kernel", lambda: True)
  widgets = importlib.util.find_spec("ipywidgets") is not None
  assert progress.choose(io.StringIO()) == ("notebook" if widgets else "log")


@pytest.mark.parametrize("tags,expected", [
    ([{"branch": "ticket"}, {"branch": "random_reinit"}], "ticket, random_reinit"),
    ([{"branch": "ticket", "seed": 0}, {"branch": "ticket", "seed": 1}], "ticket (2 tickets)"),
    ([{"run": "search", "seed": 0}], "search"),
    ([{}], "name0"),
])
def test_label_names_what_a_group_trains(tags, expected):
  tickets = [groups.Ticket(f"name{i}", None, None, None, t) for i, t in enumerate(tags)]
  assert runs._trained(tickets) == expected   # pylint: disable=protected-access


def test_progress_logger_rate_and_eta():
  now = [0.0]
  logger = progress.ProgressLogger(100, every_seconds=10.0, prefix="level 2: ",
                                   clock=lambda: now[0])
  now[0] = 5.0
  assert logger.update(10) is None  # less than every_seconds since the start
  now[0] = 10.0
  line = logger.update(10)
  assert line.startswith("level 2: step 20/100 (20.0%), 2 steps/s") and line.endswith("ETA 0:00:40")
  now[0] = 12.0
  assert logger.update(40) is None
  now[0] = 20.0
  line = logger.update(40)  # the last step is always logged
  assert "step 100/100" in line and "8 steps/s" in line and "elapsed 0:00:20, ETA 0:00:00" in line
