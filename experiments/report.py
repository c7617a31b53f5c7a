r"""Rebuilds a lottery search's reports (CSV, plot, Markdown summary) from its saved results.

  python experiments/report.py --workdir=/tmp/lt_dcgan

A workdir without a finished level or an unknown ``--metric`` is refused with one line (exit 2)
before anything is written.
"""
import numbers
import os

from absl import app
from absl import flags

from lth_jax import experiment_main
from lth_jax import lottery

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a lottery search.")
_METRIC = flags.DEFINE_string("metric", None, "Metric column (default: the family's primary).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  workdir = _WORKDIR.value
  if not os.path.isdir(workdir):
    experiment_main.fail(f"--workdir={workdir!r} is not a directory")
  try:
    rows, metric = lottery.load_results(workdir)
  except (OSError, ValueError, KeyError) as e:
    experiment_main.fail(f"--workdir={workdir!r}: {type(e).__name__}: {e}")
  metric = _METRIC.value or metric
  columns = sorted({k for r in rows for k, v in r.items()
                    if isinstance(v, numbers.Real) and not isinstance(v, bool)})
  if metric not in columns:
    experiment_main.fail(f"--metric={metric!r} is not a numeric column of the results in "
                         f"{workdir!r}; columns: {', '.join(columns)}")
  print(lottery.write_reports(workdir, rows, metric))
  print(f"reports in {os.path.abspath(workdir)}")


if __name__ == "__main__":
  app.run(main, flags_parser=experiment_main.parse_flags)
