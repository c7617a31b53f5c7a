"""Tests for lth_jax.models: DCGAN, VAE and AutoEncoder shapes, param trees, BatchNorm modes."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lth_jax import objectives
from lth_jax.models import autoencoder, dcgan, vae

# rbg keys: XLA CPU compiles threefry (partitionable) random ops in ~5 s per shape.
KEY = jax.random.key(0, impl="rbg")
W = 8


def key(seed):
  return jax.random.key(seed, impl="rbg")


def images(size, channels, n=2, seed=1):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.uniform(-1, 1, (n, size, size, channels)), jnp.float32)


def init_shapes(module, *args, **kwargs):
  """Variables as ShapeDtypeStructs: shape checks without compiling anything."""
  return jax.eval_shape(lambda: module.init(KEY, *args, **kwargs))


def subtree(tree, path):
  for name in path.split("/"):
    tree = tree[name]
  return tree


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_gan_shapes_and_names(size, channels):
  gen = dcgan.Generator(width=W, channels=channels, image_size=size, z_dim=10)
  disc = dcgan.Discriminator(width=W, channels=channels, image_size=size)
  gv = init_shapes(gen, jnp.zeros((1, 10)), train=False)
  dv = init_shapes(disc, images(size, channels, n=1), train=False)
  blocks = dcgan.num_blocks(size)
  assert blocks == {32: 3, 64: 4}[size]
  assert set(gv["params"]) == ({f"convt{i}" for i in range(blocks + 1)}
                               | {f"bn{i}" for i in range(blocks)})
  assert set(dv["params"]) == {"body", "head"}
  assert set(dv["params"]["body"]) == ({f"conv{i}" for i in range(blocks)}
                                       | {f"bn{i}" for i in range(1, blocks)})
  top = W * 2 ** (blocks - 1)
  assert gv["params"]["convt0"]["kernel"].shape == (4, 4, 10, top)
  assert "bias" not in gv["params"]["convt0"]
  assert gv["params"][f"convt{blocks}"]["bias"].shape == (channels,)
  assert dv["params"]["head"]["kernel"].shape == (4, 4, top, 1)
  assert "bias" not in dv["params"]["body"]["conv1"]
  z = jnp.zeros((3, 10))
  fake, _ = jax.eval_shape(lambda v: gen.apply(v, z, train=True, mutable=["batch_stats"]), gv)
  assert fake.shape == (3, size, size, channels)
  logits = jax.eval_shape(lambda v: disc.apply(v, jnp.zeros(fake.shape), train=False), dv)
  assert logits.shape == (3,)
  body = dcgan.DiscriminatorBody(width=W, channels=channels, image_size=size)
  body_vars = {"params": dv["params"]["body"], "batch_stats": dv["batch_stats"]["body"]}
  features = jax.eval_shape(lambda v: body.apply(v, jnp.zeros(fake.shape), train=False),
                            body_vars)
  assert features.shape == (3, 4, 4, top)


@pytest.mark.parametrize("size,channels", [(32, 1), (64, 3)])
def test_vae_and_ae_share_the_gan_param_shapes(size, channels):
  z_dim = 12
  x = images(size, channels)
  gv = init_shapes(dcgan.Generator(width=W, channels=channels, image_size=size, z_dim=z_dim),
                   jnp.zeros((1, z_dim)), train=False)
  dv = init_shapes(dcgan.Discriminator(width=W, channels=channels, image_size=size), x,
                   train=False)
  gan = {"params": {"generator": gv["params"], "discriminator": dv["params"]},
         "batch_stats": {"generator": gv["batch_stats"], "discriminator": dv["batch_stats"]}}
  for cls, head in ((vae.VAE, 2 * z_dim), (autoencoder.AutoEncoder, z_dim)):
    model = cls(width=W, channels=channels, image_size=size, z_dim=z_dim)
    variables = init_shapes(model, x, KEY, train=False)
    assert set(variables["params"]) == {"encoder", "decoder"}
    assert set(variables["params"]["encoder"]) == {"body", "head"}
    chex.assert_trees_all_equal_shapes(variables["params"]["decoder"], gv["params"])
    chex.assert_trees_all_equal_shapes(variables["params"]["encoder"]["body"],
                                       dv["params"]["body"])
    for collection in ("params", "batch_stats"):
      for gan_path, vae_path in dcgan.GAN_TO_VAE.items():
        chex.assert_trees_all_equal_shapes(subtree(variables[collection], vae_path),
                                           subtree(gan[collection], gan_path))
    assert variables["params"]["encoder"]["head"]["kernel"].shape[-1] == head
  assert dcgan.VAE_TO_GAN == {"decoder": "generator", "encoder/body": "discriminator/body"}


def test_widths_override_builds_smaller_layers():
  gen = dcgan.Generator(width=W, channels=3, image_size=32, z_dim=10, widths=(20, 9, 5))
  p = init_shapes(gen, jnp.zeros((1, 10)), train=False)["params"]
  assert [p[f"convt{i}"]["kernel"].shape for i in range(4)] == [
      (4, 4, 10, 20), (4, 4, 20, 9), (4, 4, 9, 5), (4, 4, 5, 3)]
  assert [p[f"bn{i}"]["scale"].shape for i in range(3)] == [(20,), (9,), (5,)]
  disc = dcgan.Discriminator(width=W, channels=3, image_size=32, widths=(3, 7, 11))
  d = init_shapes(disc, images(32, 3), train=False)["params"]
  assert [d["body"][f"conv{i}"]["kernel"].shape for i in range(3)] == [
      (4, 4, 3, 3), (4, 4, 3, 7), (4, 4, 7, 11)]
  assert d["head"]["kernel"].shape == (4, 4, 11, 1)
  model = vae.VAE(width=W, channels=1, image_size=32, z_dim=4, encoder_widths=(2, 3, 4),
                  decoder_widths=(6, 5, 4))
  v = init_shapes(model, images(32, 1), KEY, train=False)["params"]
  assert v["encoder"]["head"]["kernel"].shape == (4, 4, 4, 8)
  assert v["decoder"]["convt0"]["kernel"].shape == (4, 4, 4, 6)
  with pytest.raises(ValueError, match="widths"):
    init_shapes(dcgan.Generator(width=W, image_size=32, z_dim=10, widths=(4, 2)),
                jnp.zeros((1, 10)), train=False)


def test_gan_halves_list_their_channel_groups():
  """Producer, BatchNorm, consumer, width and BatchNorm epsilon of every hidden layer."""
  eps = dcgan.BN_EPSILON
  gen = dcgan.Generator(width=W, channels=1, image_size=32, z_dim=10, widths=(20, 9, 5))
  gp = init_shapes(gen, jnp.zeros((1, 10)), train=False)["params"]
  assert dcgan.generator_channel_groups(gp, "g") == [
      ("g/convt0", "g/bn0", "g/convt1", 20, eps), ("g/convt1", "g/bn1", "g/convt2", 9, eps),
      ("g/convt2", "g/bn2", "g/convt3", 5, eps)]
  disc = dcgan.Discriminator(width=W, channels=1, image_size=32, widths=(3, 7, 11))
  dp = init_shapes(disc, images(32, 1), train=False)["params"]
  assert dcgan.discriminator_channel_groups(dp, "d") == [
      ("d/body/conv0", None, "d/body/conv1", 3, None),     # no BatchNorm after the first conv
      ("d/body/conv1", "d/body/bn1", "d/body/conv2", 7, eps),
      ("d/body/conv2", "d/body/bn2", "d/head", 11, eps)]
  assert [g.name for g in dcgan.channel_groups({"generator": gp, "discriminator": dp})] == [
      "generator/convt0", "generator/convt1", "generator/convt2", "discriminator/body/conv0",
      "discriminator/body/conv1", "discriminator/body/conv2"]


@pytest.mark.parametrize("module, cls", [(vae, vae.VAE), (autoencoder, autoencoder.AutoEncoder)])
def test_vae_and_ae_list_encoder_then_decoder_groups(module, cls):
  """The encoder has the discriminator's layout (its head reads the last body conv), the
  decoder the generator's; every BatchNorm of the model uses the layout's epsilon."""
  model = cls(width=W, channels=1, image_size=32, z_dim=4)
  epsilons = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
      epsilons.append(context.module.epsilon)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    params = init_shapes(model, images(32, 1), KEY, train=False)["params"]
  groups = module.channel_groups(params)
  assert [(g.name, g.consumer, g.size) for g in groups] == [
      ("encoder/body/conv0", "encoder/body/conv1", W),
      ("encoder/body/conv1", "encoder/body/conv2", 2 * W),
      ("encoder/body/conv2", "encoder/head", 4 * W),
      ("decoder/convt0", "decoder/convt1", 4 * W), ("decoder/convt1", "decoder/convt2", 2 * W),
      ("decoder/convt2", "decoder/convt3", W)]
  assert [g.bn for g in groups] == [None, "encoder/body/bn1", "encoder/body/bn2", "decoder/bn0",
                                    "decoder/bn1", "decoder/bn2"]
  assert len(epsilons) == 5 and set(epsilons) == {dcgan.BN_EPSILON}
  assert {g.bn_epsilon for g in groups if g.bn} == {dcgan.BN_EPSILON}


def test_batchnorm_train_and_eval_paths():
  gen = dcgan.Generator(width=W, channels=1, image_size=32, z_dim=10)
  variables = gen.init(KEY, jnp.zeros((1, 10)), train=False)
  stats = variables["batch_stats"]
  chex.assert_trees_all_close(stats["bn0"]["mean"], jnp.zeros(4 * W))
  z = jax.random.normal(KEY, (8, 10))
  train_out, updates = gen.apply(variables, z, train=True, mutable=["batch_stats"])
  new_mean = updates["batch_stats"]["bn0"]["mean"]
  assert float(jnp.max(jnp.abs(new_mean))) > 0.0  # running averages moved (momentum 0.9)
  # Eval mode needs no mutable collection, uses running averages: per-example, so independent
  # of the rest of the batch; train mode normalises with batch statistics.
  eval_out = gen.apply(variables, z, train=False)
  assert float(jnp.max(jnp.abs(train_out))) <= 1.0 and float(jnp.max(jnp.abs(eval_out))) <= 1.0
  chex.assert_trees_all_close(gen.apply(variables, z[:1], train=False), eval_out[:1], atol=1e-6)
  assert not np.allclose(gen.apply(variables, z[:2], train=True, mutable=["batch_stats"])[0][0],
                         train_out[0], atol=1e-4)
  assert not np.allclose(train_out, eval_out, atol=1e-3)


def test_initialisation_is_dcgan_standard():
  gen = dcgan.Generator(width=32, channels=1, image_size=32, z_dim=100)
  p = gen.init(KEY, jnp.zeros((1, 100)), train=False)["params"]
  kernel = np.asarray(p["convt1"]["kernel"])
  assert abs(kernel.std() - 0.02) < 0.002 and abs(kernel.mean()) < 0.002
  scale = np.asarray(p["bn0"]["scale"])
  assert abs(scale.mean() - 1.0) < 0.01 and 0.01 < scale.std() < 0.03
  np.testing.assert_array_equal(p["bn0"]["bias"], 0.0)


def test_generator_uses_the_fast_transposed_conv():
  """In the generator's gradient only the 3 up-sampling forwards are lhs-dilated convs.

  flax.linen.ConvTranspose would add one more per layer (its kernel gradient) and would run the
  first (1x1-input) layer as a convolution too.
  """
  gen = dcgan.Generator(width=W, channels=1, image_size=32, z_dim=10)
  variables = gen.init(KEY, jnp.zeros((1, 10)), train=False)
  z = jax.random.normal(KEY, (4, 10))

  def loss(params):
    out, _ = gen.apply({"params": params, "batch_stats": variables["batch_stats"]}, z,
                       train=True, mutable=["batch_stats"])
    return jnp.sum(out ** 2)
  text = str(jax.make_jaxpr(jax.grad(loss))(variables["params"]))
  assert text.count("lhs_dilation=(2, 2)") == 3
  grads = jax.grad(loss)(variables["params"])
  assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(grads))


def test_vae_methods_are_pure_in_the_key():
  model = vae.VAE(width=W, channels=1, image_size=32, z_dim=6)
  x = images(32, 1, n=3)
  variables = model.init(KEY, x, KEY, train=False)
  recon, mean, logvar = model.apply(variables, x, key(5), train=False)
  assert recon.shape == x.shape and mean.shape == logvar.shape == (3, 6)
  again = model.apply(variables, x, key(5), train=False)
  chex.assert_trees_all_equal(again, (recon, mean, logvar))
  other = model.apply(variables, x, key(6), train=False)[0]
  assert not np.allclose(other, recon)
  mean2, logvar2 = model.apply(variables, x, train=False, method=model.encode)
  chex.assert_trees_all_close((mean2, logvar2), (mean, logvar))
  chex.assert_trees_all_close(model.apply(variables, x, method=model.reconstruct),
                              model.apply(variables, mean, train=False, method=model.decode))
  samples = model.apply(variables, KEY, 5, method=model.sample)
  assert samples.shape == (5, 32, 32, 1)
  assert model.apply(variables, x, method=model.synflow_forward).shape == (3, 32 * 32 + 6)
  (loss, parts), _ = jax.value_and_grad(
      lambda p: objectives.vae_loss(x, *model.apply({"params": p, "batch_stats":
                                                     variables["batch_stats"]}, x, KEY,
                                                    train=True, mutable=["batch_stats"])[0]),
      has_aux=True)(variables["params"])
  assert np.isfinite(loss) and float(parts["kl"]) >= 0.0


def test_autoencoder_reconstructs_and_trains():
  model = autoencoder.AutoEncoder(width=W, channels=3, image_size=32, z_dim=16)
  x = images(32, 3, n=4)
  variables = model.init(KEY, x, train=False)
  chex.assert_trees_all_close(model.apply(variables, x, KEY, train=False),
                              model.apply(variables, x, method=model.reconstruct))
  assert model.apply(variables, x, method=model.encode, train=False).shape == (4, 16)
  assert model.apply(variables, x, method=model.synflow_forward).shape == (4, 32 * 32 * 3)

  def loss(params):
    out, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                         train=True, mutable=["batch_stats"])
    return objectives.mse(x, out)
  grads = jax.grad(loss)(variables["params"])
  assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("build,arg,match", [
    (lambda: dcgan.Discriminator(width=W, channels=1, image_size=32), jnp.zeros((2, 32, 32, 3)),
     r"\[B, 32, 32, 1\]"),
    (lambda: dcgan.Generator(width=W, z_dim=10), jnp.zeros((2, 9)), r"z \[B, 10\]"),
    (lambda: dcgan.Generator(width=W, image_size=48, z_dim=10), jnp.zeros((2, 10)),
     "power of two"),
])
def test_bad_shapes_raise(build, arg, match):
  with pytest.raises(ValueError, match=match):
    init_shapes(build(), arg, train=False)
