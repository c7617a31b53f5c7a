r"""Reproduces the paper's claims: one resumable command, one results page.

  python experiments/reproduce.py --scale=cpu                 # every claim, docs/results/
  python experiments/reproduce.py --scale=cpu --claims=1,3    # a subset
  python experiments/reproduce.py --scale=gpu                 # paper widths, 5 seeds

Each claim's jobs (lottery searches, transfers, early-bird runs, stability) run in
``--workdir/<job>``; an interrupted run continues where it stopped, and finished jobs are
skipped, so running the command again trains nothing and rewrites the page. Several
processes may run the command on one workdir at once and share its jobs; on a CPU machine one
per core trains faster than one process on every core::

  taskset -c 0 python experiments/reproduce.py --scale=cpu &
  taskset -c 1 python experiments/reproduce.py --scale=cpu

``--jobs=search_sngan,search_wgan`` runs only the named jobs (e.g. on another machine, whose
finished job directories are then copied into the workdir).

The claims, scales and jobs are in ``lth_jax.reproduction``; the tables and verdicts in
``lth_jax.reproduction_report``.
"""
import os
import sys

from absl import app
from absl import flags

from lth_jax import experiment_main
from lth_jax import reproduction
from lth_jax import reproduction_report

_SCALE = flags.DEFINE_enum("scale", "cpu", reproduction.SCALES, "Model sizes, seeds and levels.")
_CLAIMS = flags.DEFINE_string("claims", ",".join(map(str, reproduction.CLAIMS)),
                              "Comma-separated claim numbers to run.")
_JOBS = flags.DEFINE_list("jobs", [], "Run only these of the claims' jobs (names as in the "
                         "workdir, e.g. search_sngan); the page still covers every claim asked.")
_WORKDIR = flags.DEFINE_string("workdir", "", "Runs go here (default: workdirs/reproduce_<scale>).")
_RESULTS = flags.DEFINE_string("results_dir", "",
                               "Tables, plots and README.md (default: docs/results for cpu, "
                               "docs/results/gpu for gpu, <workdir>/results for smoke).")


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


def main(argv) -> None:
  del argv
  claims = claims_from_flag(_CLAIMS.value)
  scale = _SCALE.value
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  workdir = _WORKDIR.value or os.path.join("workdirs", f"reproduce_{scale}")
  results = _RESULTS.value or {"cpu": os.path.join(root, "docs", "results"),
                               "gpu": os.path.join(root, "docs", "results", "gpu"),
                               "smoke": os.path.join(workdir, "results")}[scale]
  experiment_main.maybe_initialize_distributed()
  started = []

  def announce(job: reproduction.Job) -> None:
    started.append(job.name)
    print(f"== {job.name} ({job.binary})", flush=True)

  jobs = reproduction.jobs_for(claims, scale)
  unknown = sorted(set(_JOBS.value) - {job.name for job in jobs})
  if unknown:
    experiment_main.fail(f"--jobs: {unknown} are not jobs of claims {claims} at scale "
                         f"{scale!r}; those are: {', '.join(job.name for job in jobs)}")
  if _JOBS.value:
    jobs = [job for job in jobs if job.name in _JOBS.value]
  try:
    reproduction.run_jobs(jobs, workdir, announce=announce)
  except experiment_main.USER_ERRORS as e:
    experiment_main.fail(f"{started[-1]}: {e}" if started else str(e))
  command = "python experiments/reproduce.py " + " ".join(sys.argv[1:])
  with reproduction.file_lock(os.path.join(workdir, "report.lock"), wait=True):
    page = reproduction_report.write(workdir, results, claims, scale, command)
  print(page)
  print(f"results in {os.path.abspath(results)}")


if __name__ == "__main__":
  app.run(main)
