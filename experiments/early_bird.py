r"""Early-bird tickets (structured or unstructured) vs dense training; logic in lth_jax.early_bird.

  python experiments/early_bird.py --config=experiments/configs/dcgan_fmnist.py:smoke \
      --workdir=/tmp/eb_dcgan
  python experiments/early_bird.py --config=experiments/configs/vae_fmnist.py \
      --workdir=/tmp/eb_vae --config.early_bird.kind=unstructured --config.early_bird.rewind=True

  python experiments/early_bird.py --config=experiments/configs/dcgan_fmnist.py \
      --workdir=/tmp/eb_seeds --config.tickets.seeds=0,1,2 \
      --config.early_bird.scratch_baseline=True --config.early_bird.imp_levels=3

Writes ``results.csv``, ``summary.md`` (per seed and, for several seeds, mean ± std: the
early-bird step, FLOPs, wall-clock and metrics of the dense model, the search, the ticket, and
optionally the same architecture from a new init and IMP), ``samples_dense.png`` and
``samples_ticket.png``. The seeds of a stage train together through the ticket runner (sharded
over the devices). Running the same command again skips the finished stages; a workdir of a
different config is refused.
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from lth_jax import early_bird
from lth_jax import experiment_main

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for stages and reports.")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path.py[:preset]).",
                                          lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  experiment_main.run(early_bird.run, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
