"""Tests for the zoo's registered families: SNGAN, WGAN, WGAN-GP, the VAE (β = 1), linear AE.

Small and cheap: paper sizes by ``jax.eval_shape`` only; one smoke search per family (width 4,
batch 4, one level, ticket branch, one seed) whose saved ticket the mask checks read.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lth_jax import channels, checkpointing, configs, families, lottery, masks, pruning
from lth_jax import reproduction, runs, steps
from lth_jax.models import sngan
from tests.conftest import needs_fmnist

ZOO = ("sngan", "wgan", "wgan_gp", "vae_beta1", "linear_ae")
# Table 1's parameter counts and the counts measured at each family's paper preset.
TABLE1 = {"sngan": 6.7e6, "wgan": 6.5e6, "wgan_gp": 6.5e6, "vae_beta1": 5.6e6, "linear_ae": 2e5}
MEASURED = {"sngan": 6_740_612, "wgan": 6_086_020, "wgan_gp": 6_086_020,
            "vae_beta1": 5_360_107, "linear_ae": 204_000}
PAPER_DATA = {"linear_ae": "mnist"}   # the paper's MNIST AE; the others on CIFAR-10


def images(n=16, seed=0):
  return jnp.asarray(np.random.RandomState(seed).randint(0, 256, (n, 32, 32, 1)), jnp.uint8)


def small_config(name):
  """The smoke preset at width 4, batch 4, z_dim 8 (2 critic steps where the family has 5)."""
  config = configs.get_config(name, "fashion_mnist", "smoke")
  config.model.update(width=4, z_dim=8)
  config.train.update(batch_size=4, n_critic=min(2, config.train.n_critic))
  return config


@pytest.mark.parametrize("name", ZOO)
def test_paper_preset_parameter_count(name):
  config = configs.get_config(name, PAPER_DATA.get(name, "cifar10"), "paper")
  shapes = jax.eval_shape(families.from_config(config).init, jax.random.key(0))
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes.params))
  assert count == MEASURED[name]
  assert abs(count / TABLE1[name] - 1) <= 0.1
  assert runs.param_summary(shapes.params).startswith(f"{count:,} parameters (")


def test_presets_and_plans():
  assert families.get("vae_beta1").build is not families.get("vae").build
  assert configs.get_config("vae_beta1").loss.beta == 1.0
  assert configs.get_config("vae").loss.beta == 4.0                  # the β-VAE unchanged
  wgan, gp = configs.get_config("wgan"), configs.get_config("wgan_gp")
  assert (wgan.train.clip, wgan.train.n_critic, wgan.train.optimizer.kind) == (0.01, 5, "rmsprop")
  assert (gp.train.clip, gp.loss.gradient_penalty, gp.train.optimizer.kind) == (0.0, 10.0, "adam")
  assert configs.get_config("sngan").loss.kind == "hinge"
  jobs = {j.name: j for j in reproduction.jobs_for([1], "cpu")}
  for name in ZOO:   # one seed where a training takes minutes; the linear AE's take seconds
    want = (0, 1, 2) if name == "linear_ae" else (0,)
    assert tuple(jobs[f"search_{name}"].config.tickets.seeds) == want, name
  assert tuple(jobs["search_dcgan"].config.tickets.seeds) == (0, 1, 2)   # the paper's three


def test_structured_early_bird_refuses_the_linear_ae():
  fam = families.from_config(small_config("linear_ae"))
  with pytest.raises(ValueError, match="family 'linear_ae' has no channel layout"):
    channels.family_groups(fam, {}, fam.parts)


class Searches(dict):
  """Per family, run on first use: a smoke search (levels 0 and 1, the ticket branch, seed 0,
  2 steps) and its level-1 ticket: ``(rows, masks, trained state)`` as the search saved them."""

  def __init__(self, root):
    super().__init__()
    self.root = root

  def __missing__(self, name):
    config = small_config(name)
    config.train.update(steps=2, steps_per_call=1, log_every=2, checkpoint_every=2)
    config.lottery.update(levels=1, branches=("ticket",), rewind_step="1it")
    config.tickets.seeds = (0,)
    config.eval.update(num_samples=16, num_test=16, batch_size=16, grid_size=4)
    workdir = self.root / name
    rows = lottery.run(config, str(workdir))
    fam = families.from_config(config)
    like = jax.eval_shape(fam.init, jax.random.key(0))
    mask_like = steps.dense_masks(fam, like.params, dict(config.prune.parts),
                                  tuple(config.prune.exclude))   # None: not prunable
    ticket = workdir / "level_01" / "ticket_seed0"
    state = checkpointing.load_tree(ticket / "trained", like=like)
    self[name] = (rows, masks.load(ticket / "masks.npz", like=mask_like), state)
    return self[name]


@pytest.fixture(scope="module")
def searches(tmp_path_factory):
  return Searches(tmp_path_factory.mktemp("zoo_searches"))


def pruned_entries(m, params, prefix=""):
  """``{path: values of params[path] where the mask m[path] is False}`` over every saved mask."""
  out = {}
  for key, value in m.items():
    if isinstance(value, dict):
      out.update(pruned_entries(value, params[key], f"{prefix}{key}/"))
    elif value is not None:
      out[prefix + key] = np.asarray(params[key])[~np.asarray(value, bool)]
  return out


@needs_fmnist
@pytest.mark.parametrize("name", ZOO)
def test_smoke_search_keeps_pruned_weights_zero(searches, name):
  rows, m, state = searches[name]
  assert [(r["level"], r["branch"]) for r in rows] == [(0, "dense"), (1, "ticket")]
  metric = "recon_mse" if name == "linear_ae" else "fid_fmnist_clf"
  assert all(np.isfinite(r[metric]) for r in rows)
  assert int(state.step) == 2
  pruned = pruned_entries(m, state.params)
  assert sum(v.size for v in pruned.values()) > 0
  for path, values in pruned.items():
    np.testing.assert_array_equal(values, 0.0, err_msg=path)


@needs_fmnist
def test_sngan_normalised_kernels_keep_pruned_zeros(searches):
  _, m, state = searches["sngan"]
  d_params, d_stats = state.params["discriminator"], state.batch_stats["discriminator"]
  assert set(d_stats) == set(d_params)                  # one power-iteration vector per layer
  assert m["discriminator"]["head"]["kernel"] is None                 # excluded
  for layer, mask in m["discriminator"].items():
    if mask["kernel"] is None:
      continue
    used, _ = sngan.spectral_normalize(d_params[layer]["kernel"], d_stats[layer]["u"])
    np.testing.assert_array_equal(np.asarray(used)[~np.asarray(mask["kernel"], bool)], 0.0)
    assert np.any(np.asarray(used) != 0)


@needs_fmnist
def test_wgan_critic_respects_its_clip(searches):
  _, _, state = searches["wgan"]
  for leaf in jax.tree.leaves(state.params["discriminator"]):
    assert np.max(np.abs(np.asarray(leaf))) <= 0.01
  # BatchNorm scales start near 1: clipped to 0.01 by the first step, and a few RMSprop updates
  # at lr 2e-4 (each < 2e-3) since leave them near it, some exactly at the clip.
  scales = [np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(state.params)
            if path[-1].key == "scale" and path[0].key == "discriminator"]
  assert scales and all(np.all(s > 0.005) and np.any(s == np.float32(0.01)) for s in scales)


def test_two_steps_in_one_call_equal_two_calls():
  """The WGAN (extra critic steps with their own keys, clipping), masked, as a search runs it."""
  config = small_config("wgan")
  fam = families.from_config(config)
  state = fam.init(jax.random.key(0))
  m = steps.dense_masks(fam, state.params, dict(config.prune.parts), tuple(config.prune.exclude))
  m = pruning.magnitude(state.params, m, 0.5)
  state = state._replace(params=masks.apply(state.params, m))
  fused, _ = jax.jit(steps.multi_step(fam, 2))(state, m, images(), jax.random.key(1))
  single = jax.jit(steps.multi_step(fam, 1))
  for _ in range(2):
    state, _ = single(state, m, images(), jax.random.key(1))
  chex.assert_trees_all_close(fused.params, state.params, atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(fused.batch_stats, state.batch_stats, atol=1e-5, rtol=1e-5)
