"""Where a reproduction run stands: each job's state, trainings and compute, and what is left.

``python experiments/reproduce.py --scale=cpu --status`` prints :func:`table`; the results page
names each unfinished job's :func:`progress`. Nothing here takes a lock or trains: it reads the
files the drivers write.

* **Trainings**: a job's planned runs (:func:`planned_outputs`: every level's, stage's and
  seed's run) against the output files that exist. Runs copied from another job
  (``Job.reuse``) count as done. Jobs are those of the claims asked: ask for the claims the run
  was started with (a search grown for claims 2 and 4 trains runs claim 1's job does not list).
* **State**: ``finished`` (``job_done.json`` covers the job's config), ``running`` (its
  ``job_time.json``, which a running job rewrites every minute, changed in the last
  :data:`ACTIVE_S` seconds), ``stopped`` (started, not running), ``waiting for <job>``, or
  ``not started``. A paused (SIGSTOP) worker's job reads ``stopped`` after ``ACTIVE_S``.
* **In flight**: the newest in-stage checkpoint's stage and step; its group's runs count as
  trained in the fraction ``step / until_step`` (the group's record, ``checkpoints/<group>.json``).
* **CPU hours left** (an estimate): the runs the job has left to train itself (not those its
  ``reuse`` pairs copy) times the CPU seconds per trained run of the workdir's jobs of the same
  family and step count (their ``job_time.json`` CPU time, evaluations included, over their
  trained runs, in-flight fractions included); unknown (``?``) until such a job has trained.
"""

from __future__ import annotations

import collections
import glob
import os
import time
from collections.abc import Sequence
from typing import NamedTuple

from lth_jax import job_queue
from lth_jax import report
from lth_jax import runs

ACTIVE_S = 180.0   # a job whose clock changed this recently is being trained (it writes each 60 s)


class JobStatus(NamedTuple):
  name: str
  state: str
  done: int              # trainings whose output files exist (copies from another job included)
  planned: int           # trainings the job has in all
  in_flight: str         # e.g. 'level_02 at step 1028', or ''
  cpu_s: float           # CPU seconds spent so far (all resumptions)
  trained: float         # trainings this job trained itself, the group in flight in fractions
  to_train: int          # trainings this job trains itself (not copied from its source)
  rate_key: tuple        # jobs of one (family, steps) share a CPU cost per run


def planned_outputs(job: job_queue.Job) -> list[str]:
  """The files, relative to the job's directory, each marking one of its trainings finished,
  in run order (the driver's ``planned_outputs``)."""
  return job_queue.DRIVERS[job.binary].planned_outputs(job.config)


def _group_in_flight(job_dir: str, pending: Sequence[str], steps: int) -> tuple[str, float]:
  """The newest in-stage checkpoint of a group with runs left in ``pending`` (planned outputs
  not written yet): ``('<stage> at step N', its runs' trained fraction summed)``, or
  ``('', 0.0)``. Stages sit in the job's directory or up to two levels below (``level_LL``,
  ``target/level_LL``), a group's checkpoints in ``checkpoints*/<group>/<step>`` and its runs
  and target step in ``checkpoints/<group>.json`` (:meth:`runs.Context.run_stage`); without
  that file (a lottery search's rewind stage) the group is the stage's pending runs and its
  target ``steps``."""
  found = []
  for depth in range(3):
    for step_dir in glob.glob(os.path.join(job_dir, *["*"] * depth, "checkpoints*", "*", "*")):
      if not os.path.basename(step_dir).isdigit():
        continue
      group = os.path.dirname(step_dir)
      stage = os.path.relpath(os.path.dirname(os.path.dirname(group)), job_dir)
      stage = "" if stage == "." else stage
      try:   # a worker may delete an old step, or a finished group, while this reads
        mtime = os.path.getmtime(step_dir)
        record = runs.read_json(group + ".json") if os.path.exists(group + ".json") else None
      except FileNotFoundError:
        continue
      left = [p for p in pending if os.path.dirname(os.path.dirname(p)) == stage
              and (record is None or os.path.basename(os.path.dirname(p)) in record["runs"])]
      if left:
        step = int(os.path.basename(step_dir))
        until = record["until_step"] if record else steps
        found.append((mtime, stage, step, len(left) * min(1.0, step / until)))
  if not found:
    return "", 0.0
  _, stage, step, trained = max(found)
  return f"{stage + ' ' if stage else ''}at step {step}", trained


def copied(job: job_queue.Job, jobs: dict[str, job_queue.Job],
           planned: Sequence[str] | None = None) -> set[str]:
  """``job``'s planned outputs (``planned``, if the caller has them) that its ``reuse`` pairs
  copy from its source's planned outputs (trained there, not here)."""
  if not job.reuse:
    return set()
  planned = planned_outputs(job) if planned is None else planned
  theirs = set(planned_outputs(jobs[job.source]))
  mine = set()
  for there, here in job.reuse:
    for path in planned:
      rest = os.path.relpath(path, here)
      if not rest.startswith("..") and os.path.normpath(os.path.join(there, rest)) in theirs:
        mine.add(path)
  return mine


def job_status(job: job_queue.Job, workdir: str, jobs: dict[str, job_queue.Job],
               pending: set[str] = frozenset(), now: float | None = None) -> JobStatus:
  """``job``'s :class:`JobStatus` in ``workdir``. ``jobs``: every job by name (``job``'s source
  among them); ``pending``: the unfinished ones (a job whose source is one is waiting)."""
  path = os.path.join(workdir, job.name)
  planned = planned_outputs(job)
  done = {p for p in planned if os.path.exists(os.path.join(path, p))}
  copies = copied(job, jobs, planned)
  clock = os.path.join(path, job_queue.JOB_TIME)
  cpu_s = runs.read_json(clock)["cpu_s"] if os.path.exists(clock) else 0.0
  now = time.time() if now is None else now
  if job_queue.job_finished(job, workdir):
    state = "finished"
  elif os.path.exists(clock) and now - os.path.getmtime(clock) < ACTIVE_S:
    state = "running"
  elif job.source in pending:
    state = f"waiting for {job.source}"
  elif os.path.isdir(path):
    state = "stopped"
  else:
    state = "not started"
  flight, in_flight = "", 0.0
  if state in ("running", "stopped"):
    pending = [p for p in planned if p not in done and p not in copies]
    flight, in_flight = _group_in_flight(path, pending, job.config.train.steps)
  trained = len(done - copies) + in_flight
  return JobStatus(job.name, state, len(done), len(planned), flight, cpu_s, trained,
                   len(planned) - len(copies), (job.config.family, job.config.train.steps))


def statuses(jobs: Sequence[job_queue.Job], workdir: str,
             now: float | None = None) -> list[JobStatus]:
  """Every job's :class:`JobStatus`, in ``jobs``' order."""
  by_name = {j.name: j for j in jobs}
  pending = {j.name for j in jobs if not job_queue.job_finished(j, workdir)}
  return [job_status(j, workdir, by_name, pending, now) for j in jobs]


def progress(job: job_queue.Job, workdir: str, jobs: Sequence[job_queue.Job]) -> str:
  """An unfinished job's progress in words: 'not started' or 'N of M runs done[, <in flight>]'
  (``jobs``: every job, ``job``'s source among them)."""
  status = job_status(job, workdir, {j.name: j for j in jobs})
  if status.state == "not started":
    return status.state
  return ", ".join(filter(None, [f"{status.done} of {status.planned} runs done",
                                 status.in_flight]))


def cpu_left(found: Sequence[JobStatus]) -> dict[str, float | None]:
  """``{job: estimated CPU seconds left}``: 0 for a job with nothing left to train, None where
  no job of its family and step count has trained any part of a run yet."""
  spent, trained = collections.Counter(), collections.Counter()
  for s in found:
    if s.trained:
      spent[s.rate_key] += s.cpu_s
      trained[s.rate_key] += s.trained
  return {s.name: 0.0 if s.trained >= s.to_train else
          (s.to_train - s.trained) * spent[s.rate_key] / trained[s.rate_key]
          if trained[s.rate_key] else None for s in found}


def table(jobs: Sequence[job_queue.Job], workdir: str, now: float | None = None) -> str:
  """The Markdown status table of ``jobs`` in ``workdir``, with a total row and its rule."""
  found = statuses(jobs, workdir, now)
  left = cpu_left(found)
  hours = lambda seconds: "?" if seconds is None else f"{seconds / 3600:.2f}"
  rows = [{"job": s.name, "state": s.state, "runs": f"{s.done}/{s.planned}",
           "in flight": s.in_flight or "-", "CPU h": hours(s.cpu_s),
           "CPU h left (est.)": hours(left[s.name])}
          for s in found]
  unknown = [name for name, seconds in left.items() if seconds is None]
  rows.append({"job": "**total**",
               "state": f"{sum(s.state == 'finished' for s in found)} of {len(found)} finished",
               "runs": f"{sum(s.done for s in found)}/{sum(s.planned for s in found)}",
               "in flight": "-", "CPU h": hours(sum(s.cpu_s for s in found)),
               "CPU h left (est.)": hours(sum(v for v in left.values() if v is not None))
               + (f" + {len(unknown)} unknown" if unknown else "")})
  return (report.markdown_table(rows, list(rows[0])) + "\n\nCPU hours left (an estimate): each "
          "run a job has left to train (copies from another job excluded) at the CPU seconds "
          "per trained run of this workdir's jobs of the same family and step count "
          "(evaluations and groups in flight included; `?`: none has trained yet).")
