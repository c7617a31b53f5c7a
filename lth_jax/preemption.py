"""Stopping a run on SIGTERM or Ctrl-C with its progress saved (a preemption).

A binary calls :func:`handle_signals` once at start-up. The first SIGTERM or SIGINT then only
*requests* a stop (:func:`requested`): the ticket runner finishes the call in flight, saves the
group's checkpoint at that step, and raises :class:`Preempted`, which the binary turns into one
line and exit status ``128 + signal``. Running the same command again resumes from that step, and
the resumed run equals the uninterrupted one bit for bit (the calls after the stop are the calls
the uninterrupted run makes from that step). A second Ctrl-C stops at once, as Python does; a
repeated SIGTERM changes nothing. Without :func:`handle_signals` (a notebook, a library user)
signals keep their usual effect and :func:`requested` stays ``None`` unless :func:`request` is
called.

A multi-process run (``jax.distributed``) installs no handlers: each process would stop at a
call of its own and the next collective would hang. There JAX's preemption service (on by
default) catches a SIGTERM sent to any of the processes, and :func:`reached` agrees with every
process on the call after which all of them stop and save, through
``multihost_utils.reached_preemption_sync_point``. Ctrl-C keeps its usual effect there.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading

import jax
from jax.experimental import multihost_utils

# The first signal's name (or reason) asking for a stop. A list appended to under the GIL: the
# handler may run between any two bytecodes of the main thread, so no lock in it, and its one
# message is an unbuffered os.write.
_requested: list[str] = []
# Training calls made by this process, counted alike on every process (they make the same
# calls): JAX's preemption service names the call to stop after by this count.
_calls = itertools.count(1)


class Preempted(Exception):
  """A requested stop ended the run.

  Attributes:
    reason: what asked for the stop ('SIGTERM', 'SIGINT' or :func:`request`'s reason).
    step: the step at which the training group in flight was checkpointed, or ``None`` when
      none was (the stop came before a group's first step, between stages or jobs, or in a
      training without checkpoints such as early-bird's search, which then starts again).
  """

  def __init__(self, reason: str, step: int | None = None):
    self.reason, self.step = reason, step
    saved = f" (saved at step {step})" if step is not None else ""
    super().__init__(f"stopped by {reason}{saved}; run the same command again to resume")

  @property
  def exit_code(self) -> int:
    """``128 + signal number`` for a signal (the shell's convention), else 1."""
    number = getattr(signal, self.reason, None) if self.reason.startswith("SIG") else None
    return 128 + int(number) if number is not None else 1


def request(reason: str) -> None:
  """Asks the running training to stop at the next call boundary (the first reason is kept)."""
  if not _requested:
    _requested.append(reason)


def requested() -> str | None:
  """The reason of the stop asked for, or ``None``."""
  return _requested[0] if _requested else None


def clear() -> None:
  """Forgets a requested stop (a test, or a notebook that caught :class:`Preempted`)."""
  _requested.clear()


def reached(process_count: int) -> str | None:
  """Called after every training call, on every process: the reason to stop now, or ``None``.

  One process: the stop asked for (:func:`request`, a handled signal). Several: ``'SIGTERM'``
  at the call that JAX's preemption service chose once a SIGTERM reached any of them (the same
  call on every process), so every process must call this after every call.
  """
  if process_count == 1:
    return requested()
  if jax.config.jax_enable_preemption_service and multihost_utils.reached_preemption_sync_point(
      next(_calls)):
    return "SIGTERM"
  return None


def check() -> None:
  """Raises :class:`Preempted` (nothing saved) when a stop was requested: before work starts."""
  if (reason := requested()) is not None:
    raise Preempted(reason)


def _on_signal(number: int, frame) -> None:
  name = signal.Signals(number).name
  if name == "SIGINT" and requested() is not None:
    signal.default_int_handler(number, frame)      # a second Ctrl-C: KeyboardInterrupt now
  if requested() is None:   # os.write: a print() could re-enter a write to sys.stderr
    os.write(2, f"{name}: stopping after the training call in flight, saved (Ctrl-C again "
                f"stops at once)\n".encode())
  request(name)


def handle_signals(process_count: int = 1) -> bool:
  """Makes the first SIGTERM/SIGINT of this process a :func:`request` (main thread only).

  Args:
    process_count: the run's JAX processes; above 1 nothing is installed (see the module doc).

  Returns:
    Whether the handlers were installed.
  """
  if process_count > 1 or threading.current_thread() is not threading.main_thread():
    return False
  for number in (signal.SIGTERM, signal.SIGINT):
    signal.signal(number, _on_signal)
  return True
