"""A queue of driver jobs on one workdir, shared by any number of processes.

A :class:`Job` is one run of a driver (``find_tickets`` = :func:`lth_jax.lottery.run`,
``transfer``, ``early_bird``, ``stability``) in its own directory ``<workdir>/<job name>``.
:func:`run_jobs` runs a list of them in order beside other processes on the same workdir (one
per CPU core: ``reproduce.py --workers``): each job is locked by the process that runs it
(``job.lock``, a ``filelock`` lock, an ``flock`` on POSIX that the kernel drops when its
process dies), the others take the next job, and a job waits for its ``source``. A job whose
``job_done.json`` holds a config that :func:`covers` its own is finished and never started
again; its wall-clock and CPU seconds add up over resumptions in ``job_time.json``. The
paper's claims as such jobs are :mod:`lth_jax.reproduction`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import threading
import time
from collections.abc import Callable

import filelock
import jax
import ml_collections

from lth_jax import early_bird
from lth_jax import lottery
from lth_jax import preemption
from lth_jax import runs
from lth_jax import stability
from lth_jax import transfer

JOB_TIME = "job_time.json"   # a job's wall-clock and CPU seconds, summed over its resumptions
# Each binary's driver module: ``run(config, workdir)`` (``stability``'s also takes the workdir
# of the search it reads) and ``planned_outputs(config)`` (its runs' output files).
DRIVERS = {"find_tickets": lottery, "transfer": transfer, "early_bird": early_bird,
           "stability": stability}


@dataclasses.dataclass
class Job:
  """One driver run.

  Attributes:
    source: a job that must finish first: the search a ``stability`` job reads, or the job whose
      outputs ``reuse`` names.
    reuse: ``(there, here)`` pairs: the file or directory ``there`` of ``source``'s workdir is
      copied to ``here`` in this job's before it runs (the finished runs the two jobs share,
      which the driver then skips; a copied run of another config is refused by the driver).
  """
  name: str
  binary: str
  config: ml_collections.ConfigDict
  source: str = ""
  reuse: tuple[tuple[str, str], ...] = ()


def trained_levels(section: dict) -> dict[str, set[int]]:
  """``{branch: levels >= 1 it trains}`` of a search's ``lottery`` config section."""
  config = ml_collections.ConfigDict({"lottery": {"branch_levels": "", **section}})
  levels = range(1, section["levels"] + 1)
  return {b: {lv for lv in levels if b in lottery.branches_at(config, lv)}
          for b in section["branches"]}


def covers(done: dict, wanted: dict) -> bool:
  """Whether a job finished with config ``done`` trained everything config ``wanted`` asks for:
  the same config, except that a search may have had more levels, branches or branch levels (a
  search grown for claim 2 also finished claim 1's), and for ``runs.CADENCE_FIELDS``."""
  done, wanted = runs.without_cadence(done), runs.without_cadence(wanted)
  if done == wanted:
    return True
  extendable = [k.split(".")[1] for k in lottery.EXTENDABLE]
  rest = lambda c: {**c, "lottery": {k: v for k, v in c.get("lottery", {}).items()
                                     if k not in extendable}}
  if "lottery" not in done or rest(done) != rest(wanted):
    return False
  have, need = trained_levels(done["lottery"]), trained_levels(wanted["lottery"])
  return all(b in have and levels <= have[b] for b, levels in need.items())


def job_finished(job: Job, workdir: str) -> bool:
  """Whether ``workdir/<job name>/job_done.json`` holds a config that :func:`covers` ``job``'s
  (a search finished for claim 1 only is unfinished for claim 2, whose config adds branches)."""
  done = os.path.join(workdir, job.name, "job_done.json")
  return os.path.exists(done) and covers(runs.read_json(done), runs.config_to_dict(job.config))


@contextlib.contextmanager
def _job_clock(path: str, every_s: float = 60.0):
  """Adds this process's wall-clock and CPU seconds (all threads) to the JSON file ``path``
  every ``every_s`` seconds and at the end (a killed run loses at most ``every_s`` of them),
  and the kind of device it ran on to the file's ``devices``."""
  before = {"wall_s": 0.0, "cpu_s": 0.0, "devices": []}
  before.update(runs.read_json(path) if os.path.exists(path) else {})
  devices = sorted({*before["devices"], jax.devices()[0].device_kind})
  wall, cpu = time.perf_counter(), time.process_time()
  stop = threading.Event()

  def write():   # the thread's writes end (join) before the last one
    runs.write_json(path, {"wall_s": before["wall_s"] + time.perf_counter() - wall,
                           "cpu_s": before["cpu_s"] + time.process_time() - cpu,
                           "devices": devices})

  def loop():
    while not stop.wait(every_s):
      write()

  write()   # at once: the file's time says the job runs (reproduction_status)
  thread = threading.Thread(target=loop, name="job-clock", daemon=True)
  thread.start()
  try:
    yield
  finally:
    stop.set()
    thread.join()
    write()


@contextlib.contextmanager
def file_lock(path: str, wait: bool = False):
  """Yields whether this process holds the advisory lock ``path`` (``filelock``: an ``flock`` on
  POSIX, created if absent); with ``wait``, blocks until it does. The kernel releases it when the
  process ends, however it ends."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  lock = filelock.FileLock(path)
  try:
    lock.acquire(timeout=-1 if wait else 0)
  except filelock.Timeout:
    yield False
    return
  try:
    yield True
  finally:
    lock.release()


def run_job(job: Job, workdir: str, announce: Callable[[Job], None] = lambda job: None) -> bool:
  """Runs ``job`` in ``workdir/<name>`` unless it is :func:`job_finished`; accumulates its
  wall-clock and process CPU seconds over resumptions in ``job_time.json`` (:func:`_job_clock`).
  ``announce(job)`` is called when it starts.

  Returns:
    True when the job is finished, False when another process holds its ``job.lock``.
  """
  if job_finished(job, workdir):
    return True
  path = os.path.join(workdir, job.name)
  with file_lock(os.path.join(path, "job.lock")) as mine:
    if not mine:
      return False
    if job_finished(job, workdir):    # finished by the process that held the lock before
      return True
    announce(job)
    for there, here in job.reuse:
      here, there = os.path.join(path, here), os.path.join(workdir, job.source, there)
      if os.path.exists(there) and not os.path.exists(here):
        (shutil.copytree if os.path.isdir(there) else shutil.copyfile)(there, here)
    search = (os.path.join(workdir, job.source),) if job.binary == "stability" else ()
    with _job_clock(os.path.join(path, JOB_TIME)):
      DRIVERS[job.binary].run(job.config, path, *search)
    runs.write_json(os.path.join(path, "job_done.json"), runs.config_to_dict(job.config))
  return True


def run_jobs(jobs: list[Job], workdir: str, poll_s: float = 10.0,
             announce: Callable[[Job], None] = lambda job: None, *,
             keep_going: tuple[type[BaseException], ...] = (),
             on_failure: Callable[[Job, BaseException], None] = lambda job, error: None
             ) -> list[str]:
  """Runs ``jobs`` (:func:`jobs_for`'s order) until every one is finished or failed, beside any
  other processes working on ``workdir``: the first job that is free (not locked by another
  process, its ``source`` not pending) runs, then the list is scanned again from the top; when
  every pending job is locked or waiting, checks again after ``poll_s`` seconds.
  ``announce(job)`` is called when this process starts a job.

  A job that raises one of ``keep_going`` fails: ``on_failure(job, error)`` is called, the jobs
  that read it (``source``) are dropped, and the others go on, so one failure does not stop an
  unattended multi-day run. A failed job stays unfinished: another process, or the next run of
  the command, tries it again. Any other exception propagates, :class:`preemption.Preempted`
  too (also raised here, before a job starts, once a stop was requested).

  Returns:
    The names of the jobs that failed here or were dropped for a failed source, in order.
  """
  pending, failed = list(jobs), []
  while pending:
    preemption.check()
    waiting = {job.name for job in pending}
    for job in pending:
      if job.source in failed:
        failed.append(job.name)
        pending.remove(job)
        break
      if job.source in waiting:
        continue
      try:
        finished = run_job(job, workdir, announce)
      except keep_going as error:
        on_failure(job, error)
        failed.append(job.name)
        pending.remove(job)
        break
      if finished:
        pending.remove(job)
        break
    else:
      time.sleep(poll_s)
      pending = [job for job in pending if not job_finished(job, workdir)]
  return failed
