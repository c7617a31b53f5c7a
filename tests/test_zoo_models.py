"""Tests for the paper's other networks: SNGAN, WGAN, ResNet-DCGAN / ResNet-VAE, linear AE."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lth_jax import layers
from lth_jax.models import dcgan, linear_autoencoder, resnet, sngan, wgan

# rbg keys: XLA CPU compiles threefry (partitionable) random ops in ~5 s per shape.
KEY = jax.random.key(0, impl="rbg")
W = 4
Z = 8

GANS = {
    "sngan": (sngan.Generator, sngan.Discriminator, sngan.channel_groups),
    "wgan": (wgan.Generator, wgan.Critic, wgan.channel_groups),
    "wgan_gp": (wgan.Generator, lambda **kw: wgan.Critic(norm="layer", **kw), wgan.channel_groups),
    "resnet": (resnet.Generator, resnet.Discriminator, resnet.channel_groups),
}


def images(size, channels, n=2, seed=1):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.uniform(-1, 1, (n, size, size, channels)), jnp.float32)


def init_shapes(module, *args, **kwargs):
  """Variables as ShapeDtypeStructs: shape checks without compiling anything."""
  return jax.eval_shape(lambda: module.init(KEY, *args, **kwargs))


def random_variables(module, *args, seed=0, **kwargs):
  """Variables of ``module``'s structure filled with N(0, 0.1) draws (no init to compile)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.1, s.shape), s.dtype),
                      init_shapes(module, *args, **kwargs))


def n_params(variables):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))


def gan(name, width=W, channels=1, size=32, z_dim=Z):
  make_gen, make_disc, _ = GANS[name]
  gen = make_gen(width=width, channels=channels, image_size=size, z_dim=z_dim)
  disc = make_disc(width=width, channels=channels, image_size=size)
  return gen, disc


def gan_shapes(name, **kwargs):
  gen, disc = gan(name, **kwargs)
  gv = init_shapes(gen, jnp.zeros((1, gen.z_dim)), train=False)
  dv = init_shapes(disc, jnp.zeros((1, disc.image_size, disc.image_size, disc.channels)),
                   train=False)
  return gen, disc, gv, dv


def subtree(tree, path):
  for name in path.split("/"):
    tree = tree[name]
  return tree


def bn_paths(stats, prefix=""):
  """``/``-joined paths of every BatchNorm (a dict with running ``mean``) in ``stats``."""
  if "mean" in stats:
    return {prefix.rstrip("/")}
  return set().union(*(bn_paths(v, f"{prefix}{k}/") for k, v in stats.items()
                       if isinstance(v, dict)))


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(GANS))
def test_gan_shapes(name, channels, size):
  gen, disc, gv, dv = gan_shapes(name, channels=channels, size=size)
  z = jnp.zeros((3, Z))
  fake, _ = jax.eval_shape(lambda v: gen.apply(v, z, train=True, mutable=["batch_stats"]), gv)
  pre = jax.eval_shape(lambda v: gen.apply(v, z, train=False, activate=False), gv)
  chex.assert_shape([fake, pre], (3, size, size, channels))
  logits, _ = jax.eval_shape(lambda v: disc.apply(v, jnp.zeros(fake.shape), train=True,
                                                   mutable=["batch_stats"]), dv)
  chex.assert_shape(logits, (3,))


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_resnet_vae_shapes(channels, size):
  model = resnet.VAE(width=W, channels=channels, image_size=size, z_dim=Z)
  x = images(size, channels)
  v = init_shapes(model, x, KEY, train=False)
  (recon, mean, logvar), _ = jax.eval_shape(
      lambda v: model.apply(v, x, KEY, train=True, mutable=["batch_stats"]), v)
  chex.assert_shape([recon, mean, logvar], [x.shape, (2, Z), (2, Z)])
  rec = jax.eval_shape(lambda v: model.apply(v, x, method=model.reconstruct), v)
  dec = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((5, Z)), train=False,
                                             method=model.decode), v)
  syn = jax.eval_shape(lambda v: model.apply(v, x, method=model.synflow_forward), v)
  chex.assert_shape([rec, dec, syn], [x.shape, (5, size, size, channels),
                                      (2, size * size * channels + Z)])


@pytest.mark.parametrize("size", [28, 32])
@pytest.mark.parametrize("channels", [1, 3])
def test_linear_autoencoder_shapes(channels, size):
  model = linear_autoencoder.AutoEncoder(width=W, channels=channels, image_size=size, z_dim=Z,
                                         decoder_widths=(3, 5))
  x = images(size, channels)
  v = init_shapes(model, x, train=False)
  assert set(v) == {"params"}
  assert set(v["params"]["decoder"]) == {"dense0", "dense1", "out"}
  recon = jax.eval_shape(lambda v: model.apply(v, x, KEY, train=True), v)
  rec = jax.eval_shape(lambda v: model.apply(v, x, method=model.reconstruct), v)
  dec = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((5, Z)), train=False,
                                             method=model.decode), v)
  syn = jax.eval_shape(lambda v: model.apply(v, x, method=model.synflow_forward), v)
  chex.assert_shape([recon, rec, dec, syn], [x.shape, x.shape, (5, size, size, channels),
                                             (2, size * size * channels)])
  with pytest.raises(ValueError, match="expects images"):
    init_shapes(model, images(size + 4, channels), train=False)


def _paper_count(name):
  x3 = jnp.zeros((1, 32, 32, 3))
  if name == "resnet_vae":
    return n_params(init_shapes(resnet.VAE(width=resnet.VAE_PAPER_WIDTH, channels=3,
                                           image_size=32, z_dim=128), x3, KEY, train=False))
  if name == "linear_ae":
    model = linear_autoencoder.AutoEncoder(width=linear_autoencoder.PAPER_WIDTH, channels=1,
                                           image_size=32, z_dim=32)
    return n_params(init_shapes(model, jnp.zeros((1, 32, 32, 1)), train=False))
  width, z_dim = {"sngan": (sngan.PAPER_WIDTH, 128), "wgan": (wgan.PAPER_WIDTH, 100),
                  "resnet": (resnet.PAPER_WIDTH, 128)}[name]
  _, _, gv, dv = gan_shapes(name, width=width, channels=3, z_dim=z_dim)
  return n_params(gv) + n_params(dv)


@pytest.mark.parametrize("name, table1, measured", [
    ("sngan", 6.7e6, 6_740_612), ("wgan", 6.5e6, 6_086_020), ("resnet", 2.2e6, 2_257_924),
    ("resnet_vae", 2.8e6, 2_855_923), ("linear_ae", 2.0e5, 204_000)])
def test_param_count_at_paper_width(name, table1, measured):
  count = _paper_count(name)
  assert count == measured          # the count each module's PAPER_WIDTH comment names
  assert abs(count / table1 - 1) <= 0.1


@pytest.mark.parametrize("name", sorted(GANS))
def test_channel_groups_cover_every_batchnorm(name):
  *_, groups_of = GANS[name]
  _, _, gv, dv = gan_shapes(name)
  params = {"generator": gv["params"], "discriminator": dv["params"]}
  stats = {"generator": gv["batch_stats"], "discriminator": dv.get("batch_stats", {})}
  groups = groups_of(params)
  covered = {g.bn for g in groups} - {None}   # DCGAN layout: D's conv0 has no BatchNorm
  # ResNet: the residual stream's BatchNorms normalise sums of layers, no prunable group.
  residual = {p for p in bn_paths(stats) if name == "resnet"
              and (p.endswith("/bn1") or p == "generator/bn")}
  assert covered | residual == bn_paths(stats)
  assert covered.isdisjoint(residual)
  for g in groups:
    assert subtree(params, g.name)["kernel"].shape[-1] == g.size
    assert g.bn is None or subtree(params, g.bn)["scale"].shape == (g.size,)
    assert subtree(params, g.consumer)["kernel"].shape[-2] == g.size


def test_resnet_vae_channel_groups_and_transfer_trees():
  _, _, gv, dv = gan_shapes("resnet", z_dim=Z)
  model = resnet.VAE(width=W, channels=1, image_size=32, z_dim=Z)
  vv = init_shapes(model, images(32, 1), KEY, train=False)
  gan_tree = {"generator": gv["params"], "discriminator": dv["params"]}
  for src, dst in resnet.GAN_TO_VAE.items():
    chex.assert_trees_all_equal_shapes_and_dtypes(subtree(gan_tree, src),
                                                  subtree(vv["params"], dst))
  chex.assert_trees_all_equal_shapes_and_dtypes(gv["batch_stats"], vv["batch_stats"]["decoder"])
  groups = resnet.vae_channel_groups(vv["params"])
  assert [g.name.replace("decoder", "generator") for g in groups] == [
      g.name for g in resnet.channel_groups(gan_tree)]
  assert {g.bn for g in groups} == {f"decoder/block{i}/bn2" for i in range(3)}


def test_wgan_critic_norms():
  x = images(32, 3)
  base = init_shapes(dcgan.Discriminator(width=W, channels=3), x, train=False)
  batch = init_shapes(wgan.Critic(width=W, channels=3), x, train=False)
  chex.assert_trees_all_equal_shapes_and_dtypes(base, batch)   # the DCGAN's paths, unchanged
  layer = init_shapes(wgan.Critic(width=W, channels=3, norm="layer"), x, train=False)
  none = init_shapes(wgan.Critic(width=W, channels=3, norm="none"), x, train=False)
  assert "batch_stats" not in layer and "batch_stats" not in none
  assert set(layer["params"]["body"]) == {"conv0", "conv1", "conv2", "ln1", "ln2"}
  assert layer["params"]["body"]["ln2"]["scale"].shape == (4 * W,)
  assert set(none["params"]["body"]) == {"conv0", "conv1", "conv2"}
  assert all("bias" in p for p in none["params"]["body"].values())
  with pytest.raises(ValueError, match="unknown DiscriminatorBody.norm 'group'"):
    init_shapes(wgan.Critic(width=W, channels=3, norm="group"), x, train=False)


@pytest.fixture(scope="module")
def sn_disc():
  """A small SNGAN discriminator, random variables and images."""
  disc = sngan.Discriminator(width=W, channels=1)
  x = images(32, 1)
  return disc, random_variables(disc, x, train=False), x


def test_spectral_norm_keeps_masked_zeros(sn_disc, monkeypatch):
  disc, variables, x = sn_disc
  assert set(variables["batch_stats"]["conv3"]) == {"u"}
  kernel = variables["params"]["conv3"]["kernel"]
  mask = np.asarray(jax.random.bernoulli(jax.random.key(3, impl="rbg"), 0.5, kernel.shape))
  masked = kernel * mask
  params = {**variables["params"], "conv3": {**variables["params"]["conv3"], "kernel": masked}}
  used = []
  conv = layers.conv_general_dilated

  def spy(lhs, rhs, *args, **kwargs):
    used.append(rhs)
    return conv(lhs, rhs, *args, **kwargs)

  monkeypatch.setattr(layers, "conv_general_dilated", spy)

  @jax.jit
  def kernels_used(params):
    """The conv3 kernel the layer convolves with, in train and in eval mode."""
    out = []
    for train in (True, False):
      used.clear()
      disc.apply({**variables, "params": params}, x, train=train, mutable=["batch_stats"])
      (normalised,) = [k for k in used if k.shape == kernel.shape]
      out.append(normalised)
    return out

  for normalised in kernels_used(params):
    normalised = np.asarray(normalised)
    np.testing.assert_array_equal(normalised[~mask], 0.0)
    ratio = np.asarray(masked)[mask] / normalised[mask]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)   # one sigma for the whole kernel
    assert ratio[0] > 0
  normalised, _ = sngan.spectral_normalize(jnp.zeros((3, 3, 2, 4)), jnp.ones(4))
  chex.assert_trees_all_equal(normalised, jnp.zeros((3, 3, 2, 4)))   # fully pruned: no NaN


def test_spectral_norm_updates_only_in_train_mode(sn_disc):
  disc, variables, x = sn_disc

  @functools.partial(jax.jit, static_argnames="train")
  def stats_after(stats, train):
    return disc.apply({**variables, "batch_stats": stats}, x, train=train,
                      mutable=["batch_stats"])[1]["batch_stats"]

  stats = variables["batch_stats"]
  chex.assert_trees_all_equal(stats_after(stats, train=False), stats)
  for _ in range(30):
    stats = stats_after(stats, train=True)
  assert not np.allclose(stats["conv3"]["u"], variables["batch_stats"]["conv3"]["u"])
  w = np.asarray(variables["params"]["conv3"]["kernel"]).reshape(-1, 2 * W)
  top = np.linalg.svd(w, compute_uv=False)[0]   # the power iteration converged to sigma_max
  np.testing.assert_allclose(np.linalg.norm(w @ np.asarray(stats["conv3"]["u"])), top, rtol=1e-3)
  chex.assert_trees_all_equal(stats_after(stats, train=False), stats)


def test_bf16_clones_run():
  x = images(32, 3)
  z = jnp.ones((2, Z))
  gen, disc = gan("sngan", channels=3)
  runs = {"sngan_g": (gen, (z,)), "sngan_d": (disc, (x,)),
          "resnet_d": (gan("resnet", channels=3)[1], (x,)),
          "wgan_gp_critic": (wgan.Critic(width=W, channels=3, norm="layer"), (x,)),
          "resnet_vae": (resnet.VAE(width=W, channels=3, z_dim=Z), (x, KEY)),
          "linear_ae": (linear_autoencoder.AutoEncoder(width=W, channels=3, z_dim=Z), (x,))}

  @jax.jit
  def outputs(variables):   # one compilation for every model
    return {name: module.clone(dtype=jnp.bfloat16).apply(variables[name], *args, train=True,
                                                         mutable=["batch_stats"])[0]
            for name, (module, args) in runs.items()}

  variables = {name: random_variables(module, *args, train=False)
               for name, (module, args) in runs.items()}
  for name, out in outputs(variables).items():
    for leaf in jax.tree.leaves(out):
      assert leaf.dtype == jnp.bfloat16, name
      assert np.isfinite(np.asarray(leaf, np.float32)).all(), name


def test_width_errors():
  with pytest.raises(ValueError, match="7 positive channel counts"):
    init_shapes(sngan.Discriminator(width=W, widths=(4, 4)), images(32, 1), train=False)
  with pytest.raises(ValueError, match="3 positive channel counts"):
    init_shapes(resnet.Generator(width=W, z_dim=Z, widths=(4,)), jnp.zeros((1, Z)), train=False)
  gen = resnet.Generator(width=W, z_dim=Z, widths=(2, 3, 5))
  gv = init_shapes(gen, jnp.zeros((1, Z)), train=False)
  assert [g.size for g in resnet.generator_channel_groups(gv["params"], "g")] == [2, 3, 5]
  small = sngan.Generator(width=W, z_dim=Z, widths=(7, 6, 5, 4))
  sv = init_shapes(small, jnp.zeros((1, Z)), train=False)
  assert [g.size for g in sngan.generator_channel_groups(sv["params"], "g")] == [7, 6, 5, 4]
