r"""Trains one dense model and evaluates it; the logic lives in ``lth_jax.training``.

  python experiments/train.py --config=experiments/configs/dcgan_fmnist.py:smoke \
      --workdir=/tmp/dcgan --config.train.steps=500

Running the same command again resumes from the last checkpoint in ``--workdir``.
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from lth_jax import experiment_main
from lth_jax import training

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path.py[:preset]).",
                                          lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  experiment_main.run(training.train_and_evaluate, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
