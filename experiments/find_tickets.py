r"""Lottery ticket search (IMP with late resetting + baselines); logic in ``lth_jax.lottery``.

  python experiments/find_tickets.py --config=experiments/configs/dcgan_fmnist.py:smoke \
      --workdir=/tmp/lt_dcgan --config.lottery.levels=3 --config.tickets.seeds=0,1

Running the same command again after a kill continues where it stopped. A workdir that holds a
run of a different config is refused.
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from lth_jax import experiment_main
from lth_jax import lottery

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for levels, checkpoints and reports.")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path.py[:preset]).",
                                          lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  experiment_main.run(lottery.run, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
