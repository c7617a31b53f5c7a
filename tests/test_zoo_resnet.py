"""The ResNet pair as registered families: Table 1 sizes at the paper preset, GAN <-> VAE ticket
maps, and one tiny transfer run (both families' searches end to end). Fused steps equal single
steps for every GAN built by ``families.gan`` (test_steps, test_zoo_families' WGAN)."""
import os

import chex
import jax
import numpy as np
import pytest

from lth_jax import configs, families, masks, steps, transfer
from lth_jax.models import resnet
from tests.conftest import needs_fmnist, run_outputs

GAN, VAE = "resnet_dcgan", "resnet_vae"
OPT = {"lr": 1e-3, "b1": 0.5, "b2": 0.999}


def family(name, width=4, z_dim=8):
  return steps.make_family(name, channels=1, image_size=32, width=width, z_dim=z_dim,
                           optimizer=OPT, batch_size=4)


def shapes(name, **kwargs):
  return jax.eval_shape(family(name, **kwargs).init, jax.random.key(0)).params


def n_params(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def leaves(tree):
  return dict(masks.leaves_with_paths(tree))


def own_masks(name, params):
  return steps.dense_masks(family(name), params, dict.fromkeys(families.get(name).parts, True),
                           tuple(configs.get_config(name).prune.exclude))


def random_masks(seed, like, keep=0.5):
  """``like``'s prunable leaves replaced by random 0/1 masks (NumPy: nothing to compile)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda m: None if m is None else rng.random(m.shape) < keep, like,
                      is_leaf=lambda x: x is None)


@pytest.mark.parametrize("name, table1, measured, width", [
    (GAN, 2.2e6, 2_257_924, resnet.PAPER_WIDTH), (VAE, 2.8e6, 2_855_923, resnet.VAE_PAPER_WIDTH)])
def test_paper_preset_sizes(name, table1, measured, width):
  config = configs.get_config(name, "cifar10", "paper")
  assert (config.model.width, config.model.z_dim) == (width, 128)
  fam = families.from_config(config)
  state = jax.eval_shape(fam.init, jax.random.key(0))
  assert n_params(state.params) == measured and abs(measured / table1 - 1) <= 0.1
  samples = jax.eval_shape(lambda s: fam.generate(s.params, s.batch_stats, jax.random.key(1), 5),
                           state)
  chex.assert_shape(samples, (5, 32, 32, 3))


def test_transfer_builds_the_target_at_the_source_width():
  """Table 1's two sizes need two widths; a transfer builds both at the source config's."""
  for direction, target_count in (("resnet_vae_to_gan", 2_818_948),
                                  ("resnet_gan_to_vae", 2_290_819)):
    config = configs.get_config(configs.TRANSFER_DIRECTIONS[direction][0], "cifar10", "paper")
    config.eval.feature_space = "classifier"   # checked; no Inception weights at hand
    config.transfer.direction = direction
    source, target = transfer.derive_configs(config)
    assert target.model.width == source.model.width == config.model.width
    fam = families.from_config(target)
    assert n_params(jax.eval_shape(fam.init, jax.random.key(0)).params) == target_count


def test_gan_to_vae_to_gan_round_trip():
  gan_dense = own_masks(GAN, shapes(GAN))
  ticket = random_masks(1, gan_dense, keep=0.4)
  vae = transfer.map_masks(ticket, own_masks(VAE, shapes(VAE)), resnet.GAN_TO_VAE)
  chex.assert_trees_all_equal(transfer.map_masks(vae, gan_dense, resnet.VAE_TO_GAN), ticket)
  g, v = leaves(ticket), leaves(vae)
  np.testing.assert_array_equal(v["decoder/block2/conv1/kernel"],
                                g["generator/block2/conv1/kernel"])
  np.testing.assert_array_equal(v["encoder/body/block3/conv2/kernel"],
                                g["discriminator/body/block3/conv2/kernel"])
  # The GAN keeps generator/dense dense; the encoder head has no twin: the VAE's own masks.
  assert v["decoder/dense/kernel"].all() and v["encoder/head/kernel"].all()
  assert v["decoder/block0/bn2/scale"] is None


def test_vae_to_gan_params_and_statistics_round_trip():
  rng = np.random.default_rng(0)
  draw = lambda tree: jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), tree)
  vae = draw(jax.eval_shape(family(VAE).init, jax.random.key(0)))
  gan = draw(jax.eval_shape(family(GAN).init, jax.random.key(0)))
  on_gan = transfer.map_params(vae.params, gan.params, resnet.VAE_TO_GAN)
  chex.assert_trees_all_equal(on_gan["generator"], vae.params["decoder"])
  chex.assert_trees_all_equal(on_gan["discriminator"]["body"], vae.params["encoder"]["body"])
  chex.assert_trees_all_equal(on_gan["discriminator"]["head"], gan.params["discriminator"]["head"])
  chex.assert_trees_all_equal(transfer.map_params(on_gan, vae.params, resnet.GAN_TO_VAE),
                              vae.params)
  # BatchNorm statistics: the decoder's are the generator's (the encoder has no BatchNorm).
  stats = transfer.map_params(vae.batch_stats, gan.batch_stats, {"decoder": "generator"})
  chex.assert_trees_all_equal(stats["generator"], vae.batch_stats["decoder"])


def test_the_pair_is_declared_in_the_registry():
  assert configs.TRANSFER_DIRECTIONS["resnet_vae_to_gan"] == (VAE, GAN)
  assert configs.TRANSFER_DIRECTIONS["resnet_gan_to_vae"] == (GAN, VAE)
  for name in (GAN, VAE):   # each config's default direction is its own
    assert configs.TRANSFER_DIRECTIONS[configs.get_config(name).transfer.direction][0] == name
  with pytest.raises(ValueError, match="transfer direction 'resnet_vae_to_gan' is already "
                                       "declared by family 'resnet_vae'"):
    families.register(families.Spec(
        name="other", kind="gan", parts=("generator", "discriminator"), build=None,
        primary_metric="fid", transfers={"resnet_vae_to_gan": families.Transfer(GAN, {}, {})}))
  assert "other" not in families.names()
  with pytest.raises(transfer.TransferMismatchError):   # a width mismatch names the layers
    transfer.map_params(shapes(VAE, width=4), shapes(GAN, width=8), resnet.VAE_TO_GAN)


@needs_fmnist
def test_tiny_transfer_run_searches_both_families(tmp_path):
  """resnet_vae -> resnet_dcgan: the VAE's and the GAN's lottery searches and the transferred
  ticket, width 4, 4 steps, one level, one seed, ticket branch only."""
  config = configs.get_config(VAE, "fashion_mnist", "smoke")
  config.model.width = 4
  config.train.update(steps=4, batch_size=8, steps_per_call=1, checkpoint_every=4)
  config.lottery.update(levels=1, branches=("ticket",))
  config.eval.update(num_samples=32, num_test=32, grid_size=4)
  rows = transfer.run(config, str(tmp_path))
  assert run_outputs(tmp_path) == set(transfer.planned_outputs(config))
  by_branch = {(r["level"], r["branch"]): r for r in rows}
  assert set(by_branch) == {(0, "dense"), (1, "ticket"), (1, "transferred")}
  assert by_branch[(1, "transferred")]["sparsity"] == pytest.approx(
      by_branch[(1, "ticket")]["sparsity"])
  assert all(np.isfinite(r["fid_fmnist_clf"]) for r in rows)
  source_ticket = masks.load(str(tmp_path / "source" / "level_01" / "ticket_seed0" / "masks.npz"))
  assert 0.0 < float(masks.sparsity(source_ticket)) < 1.0
  for name in ("results.csv", "summary.md"):
    assert os.path.exists(tmp_path / name)
