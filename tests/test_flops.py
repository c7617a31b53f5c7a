"""Tests for lth_jax.flops: formulas, masks, channel-pruned widths, and XLA's cost analysis."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from lth_jax import flops, layers, masks, steps

OPT = dict(lr=1e-3, b1=0.5, b2=0.999)


def family(name, width=8, **kw):
  return steps.make_family(name, channels=1, image_size=32, width=width,
                           z_dim=100 if name == "dcgan" else 32, optimizer=OPT, batch_size=64,
                           **kw)


def xla_flops(fn, *args) -> float:
  return float(jax.jit(fn).lower(*args).compile().cost_analysis()["flops"])


@pytest.mark.parametrize("module, shape", [
    (nn.Conv(6, (3, 3), padding="VALID"), (2, 9, 9, 4)),
    (nn.Conv(6, (4, 4), strides=(2, 2), padding="VALID", use_bias=False), (2, 10, 10, 3)),
    (nn.Dense(7), (2, 20)),
    (layers.ConvTranspose(8, (4, 4), strides=1, padding=0), (2, 1, 1, 5)),
])
def test_unpadded_layers_equal_xla_cost_analysis(module, shape):
  """Without padding XLA counts exactly 2 per multiply-add plus 1 per bias add, as we do."""
  x = jnp.ones(shape)
  variables = module.init(jax.random.key(0), x)
  (count,) = flops.count_layers(module, variables, x)
  assert count.input_shape == shape[1:]
  assert count.flops * shape[0] == xla_flops(lambda v, x: module.apply(v, x), variables, x)


@pytest.mark.parametrize("name", ["dcgan", "vae", "ae"])
def test_dense_models_within_stated_tolerance_of_xla(name):
  """XLA skips kernel taps on padding; the analytic count keeps them (1.0 <= ratio <= 1.25)."""
  fam = family(name, width=16)
  state = jax.eval_shape(fam.init, jax.random.key(0))
  forward = flops.family_forward(fam)
  params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), state.params)
  stats = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), state.batch_stats)
  image = jnp.zeros((1, 32, 32, 1))
  if name == "dcgan":
    gen, disc = fam.modules["generator"], fam.modules["discriminator"]
    xla = {"generator": xla_flops(lambda p, s, z: gen.apply(
               {"params": p, "batch_stats": s}, z, train=False),
               params["generator"], stats["generator"], jnp.zeros((1, 100))),
           "discriminator": xla_flops(lambda p, s, x: disc.apply(
               {"params": p, "batch_stats": s}, x, train=False),
               params["discriminator"], stats["discriminator"], image)}
  else:
    model = fam.modules["model"]
    xla = {"all": xla_flops(lambda p, s, x: model.apply(
        {"params": p, "batch_stats": s}, x, jax.random.key(0), train=False), params, stats, image)}
    forward = {"all": sum(forward.values())}
  for part, value in xla.items():
    assert 1.0 <= forward[part] / value <= 1.25, (part, forward[part], value)


def test_layer_table_and_formulas_of_the_generator():
  fam = family("dcgan", width=8)
  counts = {c.path: c for c in flops.family_layers(fam)}
  # ConvT(z=100 -> 32) on a 1x1 input, then ConvT(32 -> 16) on 4x4 inputs (counted on its input).
  assert counts["generator/convt0"].flops == 2 * 16 * 100 * 32
  assert counts["generator/convt1"].flops == 2 * 16 * 32 * 16 * 4 * 4
  assert counts["generator/convt3"].flops == 2 * 16 * 8 * 1 * 16 * 16 + 32 * 32   # + bias
  assert counts["generator/bn1"].flops == flops.BN_FLOPS_PER_ELEMENT * 8 * 8 * 16
  # Conv(1 -> 8, k4 s2) to 16x16 outputs, with a bias.
  assert counts["discriminator/body/conv0"].flops == 2 * 16 * 1 * 8 * 16 * 16 + 16 * 16 * 8
  assert counts["discriminator/body/conv1"].output_shape == (8, 8, 16)
  text = flops.table(list(counts.values()))
  assert "generator/convt1" in text and "TOTAL" in text


def test_unstructured_masks_scale_kernel_flops_only():
  fam = family("vae")
  params = jax.eval_shape(fam.init, jax.random.key(0)).params
  dense = steps.dense_masks(fam, params, {"encoder": True, "decoder": True})
  half = jax.tree.map(lambda m: None if m is None else jnp.arange(m.size).reshape(m.shape) % 2 == 0,
                      dense, is_leaf=lambda x: x is None)
  full = {c.path: c for c in flops.family_layers(fam)}
  pruned = {c.path: c for c in flops.family_layers(fam, half)}
  conv1 = "encoder/body/conv1"
  assert pruned[conv1].density == 0.5
  assert pruned[conv1].flops == pytest.approx(0.5 * full[conv1].flops)
  head = "encoder/head"   # has a bias: only the multiply-adds halve
  assert pruned[head].flops == pytest.approx(0.5 * (full[head].flops - 64) + 64)
  assert pruned["decoder/bn0"].flops == full["decoder/bn0"].flops
  n = flops.num_params(params)
  kept, total = masks.counts(half)
  assert flops.num_params(params, half) == n - total + int(kept)


def test_channel_pruned_family_counts_its_physical_widths():
  big = family("dcgan", width=8)
  small = family("dcgan", width=8, widths={"generator": (10, 5, 3), "discriminator": (3, 5, 10)})
  fb, fs = flops.family_forward(big), flops.family_forward(small)
  layers_small = {c.path: c.flops for c in flops.family_layers(small)}
  assert layers_small["generator/convt1"] == 2 * 16 * 10 * 5 * 4 * 4
  assert layers_small["discriminator/body/conv2"] == 2 * 16 * 5 * 10 * 4 * 4
  assert fs["generator"] < 0.2 * fb["generator"] and fs["discriminator"] < 0.2 * fb["discriminator"]


@pytest.mark.parametrize("name, passes", [("dcgan", {"generator": 1, "discriminator": 3}),
                                          ("vae", {"encoder": 1, "decoder": 1})])
def test_train_step_convention(name, passes):
  fam = family(name)
  forward = flops.family_forward(fam)
  expected = 3 * 64 * sum(n * forward[p] for p, n in passes.items())
  assert flops.train_step(fam) == pytest.approx(expected)
  assert flops.sample(fam) == forward["generator" if name == "dcgan" else "decoder"]
