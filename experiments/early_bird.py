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
from lth_jax import early_bird
from lth_jax import experiment_main

if __name__ == "__main__":
  experiment_main.main(early_bird.run, "early_bird",
                       workdir_help="Directory for stages and reports.")
