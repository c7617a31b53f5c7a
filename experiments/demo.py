r"""The `make demo` job: a real, short lottery ticket search on Fashion-MNIST (<= 10 min, 2 cores).

  python experiments/demo.py --workdir=workdirs/demo

A β-VAE (decoder = the DCGAN generator's shapes) is trained densely, then pruned by IMP with 20 %
per level and late resetting, against random re-init, random pruning and SNIP at every level.
Prints the results table and where the plots and sample grids are. Running it again reuses the
finished levels.
"""
import os

from absl import app
from absl import flags

from lth_jax import configs
from lth_jax import experiment_main
from lth_jax import lottery
from lth_jax import masks

_WORKDIR = flags.DEFINE_string("workdir", "workdirs/demo", "Output directory.")


def demo_config():
  config = configs.get_config("vae", "fashion_mnist", "default")
  config.model.width = 16
  config.train.update(steps=800, steps_per_call=4, log_every=200, checkpoint_every=400)
  config.eval.update(num_samples=2000, num_test=2000)
  config.lottery.update(levels=4, rewind_step="100it",
                        branches=("ticket", "random_reinit", "random_pruning", "snip"))
  return config


def main(argv):
  del argv
  rows = experiment_main.run(lottery.run, "find_tickets", demo_config(), _WORKDIR.value)
  last = max(r["level"] for r in rows)
  ticket = os.path.join(_WORKDIR.value, f"level_{last:02d}", "ticket_seed0", "masks.npz")
  print(f"\nLevel-{last} ticket mask ({ticket}):")
  print(masks.summary(masks.load(ticket)))


if __name__ == "__main__":
  app.run(main)
