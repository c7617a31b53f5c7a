r"""Ticket transfer between a VAE and a DCGAN of one architecture; logic in ``lth_jax.transfer``.

The config is the SOURCE family's; the target's is derived from it (same data, width, z_dim,
schedule; the target family's default optimizer). VAE decoder ticket -> DCGAN generator
(discriminator dense, as in the paper):

  python experiments/transfer.py --config=experiments/configs/vae_fmnist.py:smoke \
      --workdir=/tmp/transfer_vae_to_gan

DCGAN generator ticket -> VAE decoder, starting from the GAN's weights:

  python experiments/transfer.py --config=experiments/configs/dcgan_fmnist.py \
      --config.transfer.direction=gan_to_vae --config.transfer.init_from=source \
      --workdir=/tmp/transfer_gan_to_vae

The workdir holds ``source/`` and ``target/`` (two lottery searches, each resumable and
reported like find_tickets.py), ``transferred/`` and the reports ``results.csv``,
``metric_vs_sparsity.png`` and ``summary.md``. Running again continues where it stopped.
"""
from lth_jax import experiment_main
from lth_jax import transfer

if __name__ == "__main__":
  experiment_main.main(transfer.run, "transfer",
                       workdir_help="Directory for both searches and the reports.")
