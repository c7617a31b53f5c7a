"""Transfer: GAN <-> VAE mask/param maps, mismatch errors, derived configs, a smoke run that
is killed and resumed."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

from lth_jax import branches, configs, masks, report, steps, transfer, validation
from tests.conftest import checkpoint_saved, needs_fmnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPT = dict(lr=1e-3, b1=0.5, b2=0.999)


def family(name, *, width=8, z_dim=16, image_size=32):
  return steps.make_family(name, channels=1, image_size=image_size, width=width, z_dim=z_dim,
                           optimizer=OPT, batch_size=8)


def shapes(name, **kwargs):
  return jax.eval_shape(family(name, **kwargs).init, jax.random.key(0)).params


def own_masks(name, params, exclude=()):
  return steps.dense_masks(family(name), params, dict.fromkeys(steps.PARTS[name], True), exclude)


def leaves(tree):
  return dict(masks.leaves_with_paths(tree))


def random_masks(seed, like, keep=0.5):
  """``like``'s prunable leaves replaced by random 0/1 masks (NumPy: nothing to compile)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda m: None if m is None else rng.random(m.shape) < keep, like,
                      is_leaf=lambda x: x is None)


def fake_state(name, seed):
  """A TrainState with random params and statistics, built without compiling ``init``."""
  fam = family(name)
  shape = jax.eval_shape(fam.init, jax.random.key(0))
  rng = np.random.default_rng(seed)
  draw = lambda tree: jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), tree)
  params = draw(shape.params)
  return fam, steps.TrainState(np.int32(3), params, draw(shape.batch_stats),
                               steps.fresh_opt_state(fam, params))


def test_gan_to_vae_to_gan_round_trip():
  gan_params, vae_params = shapes("dcgan"), shapes("vae")
  gan_dense = own_masks("dcgan", gan_params, ("generator/convt0", "discriminator/head"))
  ticket = random_masks(1, gan_dense, keep=0.4)
  vae = transfer.gan_to_vae_masks(ticket, own_masks("vae", vae_params))
  back = transfer.vae_to_gan_masks(vae, gan_dense)
  chex.assert_trees_all_equal(back, ticket)
  g, v = leaves(ticket), leaves(vae)
  np.testing.assert_array_equal(v["decoder/convt2/kernel"], g["generator/convt2/kernel"])
  np.testing.assert_array_equal(v["encoder/body/conv1/kernel"],
                                g["discriminator/body/conv1/kernel"])
  # Layers the GAN does not prune and the encoder head (no twin) keep the VAE's own dense masks.
  assert v["decoder/convt0/kernel"].all() and v["encoder/head/kernel"].all()
  assert v["decoder/bn0/scale"] is None


def test_vae_to_gan_to_vae_round_trip_on_layers_both_prune():
  vae_dense = own_masks("vae", shapes("vae"))
  ticket = random_masks(2, vae_dense)
  gan_dense = own_masks("dcgan", shapes("dcgan"), ("generator/convt0", "discriminator/head"))
  gan = transfer.vae_to_gan_masks(ticket, gan_dense)
  # The target decides prunability: the GAN keeps generator/convt0 dense (None).
  assert leaves(gan)["generator/convt0/kernel"] is None
  back = leaves(transfer.gan_to_vae_masks(gan, vae_dense))
  for path, m in leaves(ticket).items():
    if m is not None and path not in ("decoder/convt0/kernel", "encoder/head/kernel"):
      np.testing.assert_array_equal(back[path], m, err_msg=path)


def test_unmapped_layers_keep_the_targets_own_masks():
  gan_dense = own_masks("dcgan", shapes("dcgan"))
  own = random_masks(3, gan_dense, keep=0.7)
  vae_ticket = random_masks(4, own_masks("vae", shapes("vae")), keep=0.3)
  out = leaves(transfer.vae_to_gan_masks(vae_ticket, own))
  np.testing.assert_array_equal(out["discriminator/head/kernel"],
                                leaves(own)["discriminator/head/kernel"])
  np.testing.assert_array_equal(out["generator/convt1/kernel"],
                                leaves(vae_ticket)["decoder/convt1/kernel"])
  # Only the generator pair: the discriminator body keeps its own masks too.
  only_g = leaves(transfer.map_masks(vae_ticket, own, {"decoder": "generator"}))
  np.testing.assert_array_equal(only_g["discriminator/body/conv1/kernel"],
                                leaves(own)["discriminator/body/conv1/kernel"])


@pytest.mark.parametrize("other,names", [
    (dict(z_dim=32), ["'generator/convt0/kernel' has shape (4, 4, 16, 32)",
                      "'decoder/convt0/kernel' has (4, 4, 32, 32)"]),
    (dict(width=16), ["'generator/convt1/kernel'", "'discriminator/body/conv2/kernel'"]),
    (dict(image_size=64), ["target layer 'decoder/convt4/kernel' has no counterpart",
                           "'encoder/body/conv3/kernel'"]),
])
def test_mismatched_architectures_name_the_layers(other, names):
  gan, vae = shapes("dcgan"), shapes("vae", **other)
  with pytest.raises(transfer.TransferMismatchError) as err:
    transfer.map_params(gan, vae, transfer.dcgan.GAN_TO_VAE)
  for name in names:
    assert name in str(err.value)
  gan_masks = masks.init(gan)
  with pytest.raises(transfer.TransferMismatchError, match="generator/convt"):
    transfer.gan_to_vae_masks(gan_masks, masks.init(vae))


def test_missing_part_is_named():
  gan = masks.init(shapes("dcgan"))
  with pytest.raises(transfer.TransferMismatchError,
                     match=r"'generator' is not in the source tree .*'discriminator'"):
    transfer.gan_to_vae_masks({"discriminator": gan["discriminator"]},
                              masks.init(shapes("vae")))


def test_initial_state_from_source_and_target():
  gan_fam, gan = fake_state("dcgan", 0)
  _, vae = fake_state("vae", 1)
  ticket = random_masks(5, own_masks("dcgan", gan.params, ("generator/convt0",
                                                            "discriminator/head")))
  state = transfer.initial_state(gan_fam, gan, ticket, init_from="source", source_theta_k=vae,
                                 name_map={"decoder": "generator"})
  expected_g = masks.apply(vae.params["decoder"], ticket["generator"])
  chex.assert_trees_all_equal(state.params["generator"], expected_g)
  chex.assert_trees_all_equal(state.params["discriminator"],
                              masks.apply(gan.params, ticket)["discriminator"])
  chex.assert_trees_all_equal(state.batch_stats["generator"], vae.batch_stats["decoder"])
  assert int(state.opt_state["generator"][0].count) == 0
  same = transfer.initial_state(gan_fam, gan, ticket, init_from="target")
  chex.assert_trees_all_equal(same, branches.rewind(gan_fam, gan, ticket))
  with pytest.raises(ValueError, match="transfer.init_from"):
    transfer.initial_state(gan_fam, gan, ticket, init_from="nowhere")


def test_derived_configs_prune_corresponding_layers():
  config = configs.get_config("vae", "fashion_mnist", "smoke")
  source, target = transfer.derive_configs(config)
  assert (source.family, target.family) == ("vae", "dcgan")
  assert target.model.to_dict() == config.model.to_dict()
  assert target.train.optimizer.to_dict() == configs.get_config("dcgan").train.optimizer.to_dict()
  assert tuple(source.lottery.branches) == ("ticket",)
  assert target.lottery.branches == config.lottery.branches and "transfer" not in target
  # Paper default: only generator <-> decoder; the discriminator / encoder stays dense.
  assert dict(target.prune.parts) == {"generator": True, "discriminator": False}
  assert dict(source.prune.parts) == {"encoder": False, "decoder": True}
  assert tuple(target.prune.exclude) == ("generator/convt0",)
  assert tuple(source.prune.exclude) == ("decoder/convt0",)
  config.transfer.with_discriminator = True
  source, target = transfer.derive_configs(config)
  assert tuple(source.prune.exclude) == ("decoder/convt0", "encoder/head")
  assert tuple(target.prune.exclude) == ("discriminator/head", "generator/convt0")
  # The prunable sets correspond leaf for leaf, so every IMP level has the same sparsity.
  src = steps.dense_masks(family("vae"), shapes("vae"), dict(source.prune.parts),
                          tuple(source.prune.exclude))
  tgt = steps.dense_masks(family("dcgan"), shapes("dcgan"), dict(target.prune.parts),
                          tuple(target.prune.exclude))
  assert masks.summary(transfer.vae_to_gan_masks(src, tgt)) == masks.summary(tgt)
  assert masks.counts(src)[1] == masks.counts(tgt)[1]

  gan_config = configs.get_config("dcgan", "fashion_mnist", "smoke")
  gan_config.transfer.direction = "gan_to_vae"
  source, target = transfer.derive_configs(gan_config)
  assert target.family == "vae" and target.model.z_dim == gan_config.model.z_dim
  assert dict(target.prune.parts) == {"encoder": False, "decoder": True}


def test_vae_and_wgan_transfer_both_ways_each_target_with_its_own_recipe():
  """The WGAN's networks are the DCGAN's: the registered maps carry a ticket VAE -> WGAN -> VAE
  on the layers both prune, and each derived target trains with its own loss and optimizer."""
  def name_map(family_name, direction):   # the registered map, discriminator/encoder included
    config = configs.get_config(family_name)
    config.transfer.update(direction=direction, with_discriminator=True)
    return transfer.spec_from_config(config).name_map

  vae_dense = own_masks("vae", shapes("vae"))
  wgan_dense = own_masks("wgan", shapes("wgan"), ("generator/convt0", "discriminator/head"))
  ticket = random_masks(5, vae_dense)
  wgan = transfer.map_masks(ticket, wgan_dense, name_map("vae", "vae_to_wgan"))
  assert leaves(wgan)["generator/convt0/kernel"] is None
  np.testing.assert_array_equal(leaves(wgan)["discriminator/body/conv1/kernel"],
                                leaves(ticket)["encoder/body/conv1/kernel"])
  back = leaves(transfer.map_masks(wgan, vae_dense, name_map("wgan", "wgan_to_vae")))
  for path, m in leaves(ticket).items():
    if m is not None and path not in ("decoder/convt0/kernel", "encoder/head/kernel"):
      np.testing.assert_array_equal(back[path], m, err_msg=path)

  config = configs.get_config("vae", "fashion_mnist", "smoke")
  config.transfer.direction = "vae_to_wgan"
  _, target = transfer.derive_configs(config)
  wgan_defaults = configs.get_config("wgan")
  assert target.family == "wgan" and target.loss.kind == "wasserstein"
  assert (target.train.n_critic, target.train.clip) == (5, 0.01)
  assert target.train.optimizer.to_dict() == wgan_defaults.train.optimizer.to_dict()
  assert target.train.steps == config.train.steps             # the source's schedule
  validation.check(target, "find_tickets")
  source, target = transfer.derive_configs(configs.get_config("wgan", "fashion_mnist", "smoke"))
  assert (source.family, target.family) == ("wgan", "vae")
  assert (target.loss.kind, target.train.n_critic, target.train.clip) == ("bce", 1, 0.0)
  assert target.train.optimizer.to_dict() == configs.get_config("vae").train.optimizer.to_dict()
  validation.check(target, "find_tickets")                    # no GAN field left on the VAE


@pytest.mark.parametrize("family_name,field,value,message", [
    ("vae", "direction", "vae_to_ae", "unknown transfer.direction"),
    ("vae", "direction", "gan_to_vae", "needs a dcgan config as the source, but family='vae'"),
    ("ae", "direction", "vae_to_gan", "needs a vae config as the source, but family='ae'"),
    ("vae", "init_from", "scratch", "unknown transfer.init_from"),
])
def test_bad_transfer_section(family_name, field, value, message):
  config = configs.get_config(family_name, "fashion_mnist", "smoke")
  config.transfer[field] = value
  with pytest.raises(ValueError, match=message):
    transfer.derive_configs(config)


def test_nothing_prunable_on_both_sides_is_an_error():
  config = configs.get_config("vae", "fashion_mnist", "smoke")
  config.prune.exclude = ("decoder",)
  with pytest.raises(ValueError, match="no transferred layer is prunable in both families"):
    transfer.derive_configs(config)


# Smoke preset, one level, 12 steps and in-level checkpoints every 2: one call per step.
KILL_OVERRIDES = ("--config.lottery.branches=('ticket','random_reinit','random_pruning')",
                  "--config.lottery.levels=1", "--config.train.steps=12",
                  "--config.train.checkpoint_every=2", "--config.train.steps_per_call=1")


def check_smoke_outputs(workdir):
  """The finished vae_to_gan run: reports, branches, and transferred masks at every level."""
  for name in ("results.csv", "metric_vs_sparsity.png", "summary.md", "config.json"):
    assert (workdir / name).exists(), name
  rows = report.read_csv(workdir / "results.csv")
  assert {r["branch"] for r in rows} == {"dense", "ticket", "random_reinit", "random_pruning",
                                         "transferred"}
  with open(workdir / "config.json") as f:
    levels = json.load(f)["lottery"]["levels"]
  for level in range(1, levels + 1):
    by_branch = {r["branch"]: r for r in rows if r["level"] == level}
    assert by_branch["transferred"]["sparsity"] == by_branch["ticket"]["sparsity"] > 0
    assert np.isfinite(by_branch["transferred"]["fid_fmnist_clf"])
    name = f"level_{level:02d}"
    moved = masks.load(workdir / "transferred" / name / "transferred_seed0" / "masks.npz")
    source = masks.load(workdir / "source" / name / "ticket_seed0" / "masks.npz")
    own = masks.load(workdir / "target" / name / "ticket_seed0" / "masks.npz")
    assert masks.counts(moved)[0] == masks.counts(own)[0]
    chex.assert_trees_all_equal(moved["generator"]["convt1"], source["decoder"]["convt1"])
    assert not jax.tree.leaves(moved["discriminator"])  # dense: no prunable leaf
    assert float(masks.distance(moved, own)) > 0.0
  with open(workdir / "summary.md") as f:
    summary = f.read()
  assert "| transferred |" in summary and "## Transfer (vae_to_gan)" in summary
  with open(workdir / "target" / "config.json") as f:
    assert json.load(f)["family"] == "dcgan"


@needs_fmnist
def test_smoke_binary_and_kill_and_resume_is_bit_identical(tmp_path):
  """The binary's smoke run (vae_to_gan) writes every report; then SIGKILL inside the transferred
  stage (after one of its in-level checkpoints) and the same command again: the transferred runs
  equal the uninterrupted run's (the finished source and target searches are copied from that
  run, so only the transferred stage trains)."""

  def command(workdir):
    return [sys.executable, os.path.join(ROOT, "experiments", "transfer.py"),
            f"--config={ROOT}/experiments/configs/vae_fmnist.py:smoke", f"--workdir={workdir}",
            *KILL_OVERRIDES]

  reference = tmp_path / "reference"
  out = subprocess.run(command(reference), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  check_smoke_outputs(reference)
  killed = tmp_path / "killed"
  for search in ("source", "target"):   # finished searches are reused: only 'transferred' runs
    shutil.copytree(reference / search, killed / search)
  proc = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  target = killed / "transferred" / "level_01" / "checkpoints"
  deadline = time.time() + 300
  while time.time() < deadline and not checkpoint_saved(target):
    time.sleep(0.02)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not (killed / "transferred" / "level_01" / "done.json").exists(), "finished before kill"
  out = subprocess.run(command(killed), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  name = os.path.join("transferred", "level_01", "transferred_seed0")
  chex.assert_trees_all_equal(masks.load(reference / name / "masks.npz"),
                              masks.load(killed / name / "masks.npz"))
  with open(reference / name / "metrics.json") as f:
    expected = json.load(f)
  with open(killed / name / "metrics.json") as f:
    got = json.load(f)
  for key in ("fid_fmnist_clf", "kid_fmnist_clf", "sparsity", "steps"):
    assert got[key] == expected[key], key
