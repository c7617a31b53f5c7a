r"""Trains one dense model and evaluates it; the logic lives in ``lth_jax.training``.

  python experiments/train.py --config=experiments/configs/dcgan_fmnist.py:smoke \
      --workdir=/tmp/dcgan --config.train.steps=500

Running the same command again resumes from the last checkpoint in ``--workdir``.
"""
from lth_jax import experiment_main
from lth_jax import training

if __name__ == "__main__":
  experiment_main.main(training.train_and_evaluate, "train",
                       workdir_help="Directory for checkpoints, metrics and samples.")
