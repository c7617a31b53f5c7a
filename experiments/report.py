r"""Rebuilds a lottery search's reports (CSV, plot, Markdown summary) from its saved results.

  python experiments/report.py --workdir=/tmp/lt_dcgan
"""
import os
import sys

from absl import app
from absl import flags

from lth_jax import lottery

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a lottery search.")
_METRIC = flags.DEFINE_string("metric", None, "Metric column (default: the family's primary).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  try:
    rows, metric = lottery.load_results(_WORKDIR.value)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(lottery.write_reports(_WORKDIR.value, rows, _METRIC.value or metric))
  print(f"reports in {os.path.abspath(_WORKDIR.value)}")


if __name__ == "__main__":
  app.run(main)
