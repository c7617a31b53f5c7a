r"""Lottery ticket search (IMP with late resetting + baselines); logic in ``lth_jax.lottery``.

  python experiments/find_tickets.py --config=experiments/configs/dcgan_fmnist.py:smoke \
      --workdir=/tmp/lt_dcgan --config.lottery.levels=3 --config.tickets.seeds=0,1

Running the same command again after a kill continues where it stopped. A workdir that holds a
run of a different config is refused.
"""
from lth_jax import experiment_main
from lth_jax import lottery

if __name__ == "__main__":
  experiment_main.main(lottery.run, "find_tickets",
                       workdir_help="Directory for levels, checkpoints and reports.")
