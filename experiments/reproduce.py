r"""Reproduces the paper's claims: one resumable command, one results page.

  python experiments/reproduce.py --scale=cpu                 # every claim, docs/results/
  python experiments/reproduce.py --scale=cpu --claims=1,3    # a subset
  python experiments/reproduce.py --scale=gpu                 # paper widths, 5 seeds

Each claim's jobs (lottery searches, transfers, early-bird runs, stability) run in
``--workdir/<job>``; an interrupted run continues where it stopped, and finished jobs are
skipped, so running the command again trains nothing and rewrites the page. A job that fails
prints one ``error:`` line and the others go on (those that read it wait for the next run);
the command then exits with status 2, naming them. SIGTERM or Ctrl-C stops it with the training
in flight saved (``lth_jax.preemption``; exit status 143 or 130). Several
processes may run the command on one workdir at once and share its jobs; on a CPU machine one
per core trains faster than one process on every core, which ``--workers`` starts::

  python experiments/reproduce.py --scale=cpu --workers=2     # one process per core, pinned

``--jobs=search_sngan,search_wgan`` runs only the named jobs (e.g. on another machine, whose
finished job directories are then copied into the workdir). ``--status`` trains nothing: it
prints each job's state, trainings done, CPU hours spent and an estimate of those left
(``lth_jax.reproduction_status``), beside running workers too.

The claims, scales and jobs are in ``lth_jax.reproduction``; the tables and verdicts in
``lth_jax.reproduction_report``.
"""
import os
import signal
import subprocess
import sys
import time

import jax
from absl import app
from absl import flags

from lth_jax import experiment_main
from lth_jax import job_queue
from lth_jax import preemption
from lth_jax import reproduction
from lth_jax import reproduction_report
from lth_jax import reproduction_status

_SCALE = flags.DEFINE_enum("scale", "cpu", reproduction.SCALES, "Model sizes, seeds and levels.")
_CLAIMS = flags.DEFINE_string("claims", ",".join(map(str, reproduction.CLAIMS)),
                              "Comma-separated claim numbers to run.")
_JOBS = flags.DEFINE_list("jobs", [], "Run only these of the claims' jobs (names as in the "
                         "workdir, e.g. search_sngan); the page still covers every claim asked.")
_WORKERS = flags.DEFINE_integer("workers", 1, "Processes sharing the jobs, each pinned to its "
                                "own CPU core where the OS allows (Linux): one per core trains "
                                "faster on a CPU than one process on every core (BENCHMARKS.md).")
_WORKDIR = flags.DEFINE_string("workdir", "", "Runs go here (default: workdirs/reproduce_<scale>).")
_STATUS = flags.DEFINE_bool("status", False, "Print where the run stands (each job's state, "
                            "trainings done, CPU hours spent and left) and exit; trains nothing.")
_RESULTS = flags.DEFINE_string("results_dir", "",
                               "Tables, plots and README.md (default: docs/results for cpu, "
                               "docs/results/gpu for gpu, <workdir>/results for smoke).")
# A worker's exit status when SIGTERM or Ctrl-C stopped it with its progress saved.
_STOP_CODES = (128 + signal.SIGTERM, 128 + signal.SIGINT)


def claims_from_flag(text: str) -> list[int]:
  """The claim numbers of ``--claims``; exits with one message if one is unknown."""
  try:
    claims = sorted({int(c) for c in text.split(",") if c.strip()})
  except ValueError:
    experiment_main.fail(f"--claims must be comma-separated claim numbers "
                         f"{tuple(reproduction.CLAIMS)}, got {text!r}")
  unknown = [c for c in claims if c not in reproduction.CLAIMS]
  if unknown or not claims:
    experiment_main.fail(f"--claims={text!r}: unknown claim(s) {unknown}; the claims are "
                         f"{tuple(reproduction.CLAIMS)}")
  return claims


def without_workers(args: list[str]) -> list[str]:
  """``args`` without ``--workers=N`` / ``--workers N`` (which changes no result)."""
  kept, skip = [], False
  for arg in args:
    if not skip and not arg.startswith("--workers"):
      kept.append(arg)
    skip = arg == "--workers"
  return kept


def run_workers(count: int) -> None:
  """Runs this command as ``count`` processes (``--workers=1`` each) pinned round-robin to the
  CPU cores this process may use; each writes the page when every job is finished."""
  cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
  argv = without_workers(sys.argv) + ["--workers=1"]
  procs, stopping = [], []
  # A SIGTERM for this process goes on to the workers, which stop with their progress saved
  # (lth_jax.preemption); Ctrl-C reaches them from the terminal, so here it only waits for them.

  def forward(number, frame):
    del frame
    stopping.append(number)
    for proc in procs:
      proc.send_signal(number)

  signal.signal(signal.SIGTERM, forward)
  signal.signal(signal.SIGINT, lambda number, frame: stopping.append(number))
  for i in range(count):
    if stopping:
      break
    pin = (lambda core=cores[i % len(cores)]: os.sched_setaffinity(0, {core})) if cores else None
    procs.append(subprocess.Popen([sys.executable, *argv], preexec_fn=pin))
    time.sleep(1.0)   # staggered starts: the first takes the first job before the next looks
  codes = [p.wait() for p in procs]
  stopped = {code for code in codes if code in _STOP_CODES}
  if stopped and not set(codes) - stopped - {0}:
    print(f"--workers={count}: stopped with progress saved (worker exit codes {codes}); run the "
          "same command again to resume", file=sys.stderr, flush=True)
    sys.exit(max(stopped))
  if any(codes):
    experiment_main.fail(f"--workers={count}: worker exit codes {codes} (their messages above)")


def main(argv) -> None:
  del argv
  claims = claims_from_flag(_CLAIMS.value)
  scale = _SCALE.value
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  workdir = _WORKDIR.value or os.path.join("workdirs", f"reproduce_{scale}")
  results = _RESULTS.value or {"cpu": os.path.join(root, "docs", "results"),
                               "gpu": os.path.join(root, "docs", "results", "gpu"),
                               "smoke": os.path.join(workdir, "results")}[scale]
  jobs = reproduction.jobs_for(claims, scale)
  unknown = sorted(set(_JOBS.value) - {job.name for job in jobs})
  if unknown:
    experiment_main.fail(f"--jobs: {unknown} are not jobs of claims {claims} at scale "
                         f"{scale!r}; those are: {', '.join(job.name for job in jobs)}")
  if _JOBS.value:
    every = {job.name: job for job in jobs}
    jobs = [job for job in jobs if job.name in _JOBS.value]
    blocked = {job.name: job.source for job in jobs if job.source and job.source not in
               _JOBS.value and not job_queue.job_finished(every[job.source], workdir)}
    if blocked:
      experiment_main.fail(
          f"--jobs: {sorted(blocked)} need {sorted(set(blocked.values()))} finished first "
          f"(not finished in {workdir}); add them to --jobs")
  if _STATUS.value:
    if not os.path.isdir(workdir):
      experiment_main.fail(f"--status: no workdir {workdir!r} (nothing has run there)")
    print(reproduction_status.table(jobs, workdir))
    return
  if _WORKERS.value < 1:
    experiment_main.fail(f"--workers must be >= 1, got {_WORKERS.value}")
  if _WORKERS.value > 1:
    run_workers(_WORKERS.value)
    return
  experiment_main.maybe_initialize_distributed()
  preemption.handle_signals(jax.process_count())

  def announce(job: job_queue.Job) -> None:
    print(f"== {job.name} ({job.binary})", flush=True)

  try:
    failed = job_queue.run_jobs(
        jobs, workdir, announce=announce, keep_going=experiment_main.USER_ERRORS,
        on_failure=lambda job, error: experiment_main.print_error(f"{job.name}: {error}"))
  except preemption.Preempted as stop:
    experiment_main.exit_preempted(stop)
  command = "python experiments/reproduce.py " + " ".join(without_workers(sys.argv[1:]))
  with job_queue.file_lock(os.path.join(workdir, "report.lock"), wait=True):
    try:
      page = reproduction_report.write(workdir, results, claims, scale, command)
    except ValueError as e:   # jobs measured in different feature spaces
      experiment_main.fail(str(e))
  print(page)
  print(f"results in {os.path.abspath(results)}")
  if failed:
    experiment_main.fail(f"jobs not finished: {', '.join(failed)} (failed, or reading one "
                         "that failed; messages above): the same command tries them again")


if __name__ == "__main__":
  app.run(main)
