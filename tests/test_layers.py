"""Tests for lth_jax.layers: the fast transposed conv against flax.linen.ConvTranspose."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lth_jax import layers

HIGHEST = lax.Precision.HIGHEST
TOL = dict(rtol=1e-5, atol=1e-5)

# (input H, W, C_in, C_out, kernel, stride, padding)
CASES = [
    (5, 5, 3, 4, 4, 2, 1),
    (5, 4, 3, 4, 4, 2, 0),
    (4, 4, 2, 3, 3, 2, 1),
    (4, 5, 2, 3, 3, 2, 0),
    (5, 5, 3, 2, 4, 1, 1),
    (4, 4, 3, 2, 4, 1, 0),
    (5, 3, 2, 3, 3, 1, 1),
    (4, 4, 2, 3, 3, 1, 0),
    (1, 1, 6, 5, 4, 1, 0),   # the generator's first layer (einsum path)
    (1, 1, 6, 5, 4, 2, 1),
    (1, 3, 2, 3, 3, 2, 1),   # one row: negative padding inside the kernel-tangent conv
]


def flax_reference(features, k, s, p):
  """flax's ConvTranspose computing the same function (its kernel is ``K.swapaxes(2, 3)``)."""
  module = nn.ConvTranspose(features, (k, k), (s, s), padding=((k - 1 - p, k - 1 - p),) * 2,
                            transpose_kernel=True, use_bias=False, precision=HIGHEST)
  return lambda x, kernel: module.apply({"params": {"kernel": kernel.swapaxes(2, 3)}}, x)


def inputs(h, w, c_in, c_out, k, seed=0):
  rng = np.random.default_rng(seed)   # (XLA CPU compiles threefry random ops slowly)
  return (jnp.asarray(rng.normal(size=(2, h, w, c_in)), jnp.float32),
          jnp.asarray(rng.normal(size=(k, k, c_in, c_out)) / k, jnp.float32))


def ours(s, p):
  return lambda x, kernel: layers.conv_transpose(x, kernel, s, p, precision=HIGHEST)


def scalar(fn):
  return lambda x, kernel: jnp.sum(jnp.sin(fn(x, kernel)))


@pytest.mark.parametrize("h,w,c_in,c_out,k,s,p", CASES)
def test_forward_and_gradients_match_flax(h, w, c_in, c_out, k, s, p):
  x, kernel = inputs(h, w, c_in, c_out, k)
  ref, fast = flax_reference(c_out, k, s, p), ours(s, p)
  y = fast(x, kernel)
  assert y.shape == (2, layers.output_size(h, k, s, p), layers.output_size(w, k, s, p), c_out)
  chex.assert_trees_all_close(y, ref(x, kernel), **TOL)
  grads = jax.grad(scalar(fast), argnums=(0, 1))(x, kernel)
  chex.assert_trees_all_close(grads, jax.grad(scalar(ref), argnums=(0, 1))(x, kernel), **TOL)
  # One argument at a time (the JVP rule's symbolic-zero branches).
  chex.assert_trees_all_close(jax.grad(scalar(fast), argnums=1)(x, kernel), grads[1], **TOL)
  chex.assert_trees_all_close(jax.grad(scalar(fast), argnums=0)(x, kernel), grads[0], **TOL)


@pytest.mark.parametrize("h,w,c_in,c_out,k,s,p", [CASES[0], CASES[2], CASES[4], CASES[8]])
def test_forward_mode_and_second_order_match_flax(h, w, c_in, c_out, k, s, p):
  x, kernel = inputs(h, w, c_in, c_out, k)
  dx, dk = inputs(h, w, c_in, c_out, k, seed=1)
  ref, fast = flax_reference(c_out, k, s, p), ours(s, p)
  chex.assert_trees_all_close(jax.jvp(fast, (x, kernel), (dx, dk)),
                              jax.jvp(ref, (x, kernel), (dx, dk)), **TOL)
  # GraSP's Hessian-gradient product: forward-over-reverse, and reverse-over-reverse.
  hvp_fast = jax.jvp(jax.grad(scalar(fast), (0, 1)), (x, kernel), (dx, dk))[1]
  hvp_ref = jax.jvp(jax.grad(scalar(ref), (0, 1)), (x, kernel), (dx, dk))[1]
  chex.assert_trees_all_close(hvp_fast, hvp_ref, rtol=1e-4, atol=1e-4)

  def rev_rev(fn):
    def inner(x, kernel):
      g = jax.grad(scalar(fn), (0, 1))(x, kernel)
      return jnp.vdot(g[0], dx) + jnp.vdot(g[1], dk)
    return jax.grad(inner, (0, 1))(x, kernel)
  chex.assert_trees_all_close(rev_rev(fast), hvp_ref, rtol=1e-4, atol=1e-4)


def test_flax_equivalence_without_kernel_transpose():
  """transpose_kernel=False computes the same function with the spatially flipped kernel."""
  x, kernel = inputs(5, 5, 3, 4, 4)
  module = nn.ConvTranspose(4, (4, 4), (2, 2), padding=((2, 2), (2, 2)), use_bias=False,
                            precision=HIGHEST)
  ref = module.apply({"params": {"kernel": kernel[::-1, ::-1]}}, x)
  chex.assert_trees_all_close(ours(2, 1)(x, kernel), ref, **TOL)


def test_scatter_semantics_by_hand():
  """A single input pixel writes the (unflipped) kernel at offset i*s - p, as PyTorch does."""
  x = jnp.zeros((1, 3, 3, 1)).at[0, 1, 2, 0].set(1.0)
  kernel = jnp.arange(16.0).reshape(4, 4, 1, 1)
  y = layers.conv_transpose(x, kernel, 2, 1)[0, :, :, 0]
  expected = np.zeros((6, 6))
  # Output rows 1*2-1+a for a in 0..3 -> 1..4; columns 2*2-1+c -> 3..6, cropped to 3..5.
  expected[1:5, 3:6] = np.arange(16.0).reshape(4, 4)[:, :3]
  np.testing.assert_array_equal(y, expected)


def count_lhs_dilated_convs(fn, *args):
  """Convolutions over a stride-dilated input in ``fn``'s jaxpr (inner jaxprs included)."""
  return str(jax.make_jaxpr(fn)(*args)).count("lhs_dilation=(2, 2)")


def test_gradient_avoids_lhs_dilated_kernel_gradient():
  """Only the forward pass is an lhs-dilated conv; flax's kernel gradient is a second one."""
  x, kernel = inputs(8, 8, 4, 3, 4)
  grad_fast = jax.grad(scalar(ours(2, 1)), argnums=(0, 1))
  grad_flax = jax.grad(scalar(flax_reference(3, 4, 2, 1)), argnums=(0, 1))
  assert count_lhs_dilated_convs(grad_fast, x, kernel) == 1
  assert count_lhs_dilated_convs(grad_flax, x, kernel) == 2


def test_vmap_over_kernels_matches_loop():
  x, kernel = inputs(4, 4, 2, 3, 4)
  kernels = jnp.stack([kernel, 2.0 * kernel, -kernel])
  grad = jax.grad(scalar(ours(2, 1)), argnums=(0, 1))
  batched = jax.vmap(grad, in_axes=(None, 0))(x, kernels)
  looped = [grad(x, k) for k in kernels]
  chex.assert_trees_all_close(batched, jax.tree.map(lambda *a: jnp.stack(a), *looped), **TOL)


def test_module_params_bias_and_dtype():
  module = layers.ConvTranspose(6, kernel_size=(4, 4), strides=(2, 2), padding=1)
  x = jnp.ones((2, 4, 4, 3))
  variables = module.init(jax.random.key(0, impl="rbg"), x)
  chex.assert_trees_all_equal_shapes(variables["params"], {"kernel": jnp.zeros((4, 4, 3, 6)),
                                                           "bias": jnp.zeros(6)})
  bias = jnp.arange(6.0)
  params = {"kernel": variables["params"]["kernel"], "bias": bias}
  y = module.apply({"params": params}, x)
  expected = layers.conv_transpose(x, params["kernel"], 2, 1) + bias
  chex.assert_trees_all_close(y, expected, **TOL)
  assert y.shape == (2, 8, 8, 6)
  half = layers.ConvTranspose(6, use_bias=False, dtype=jnp.bfloat16)
  half_vars = half.init(jax.random.key(0, impl="rbg"), x)
  assert half.apply(half_vars, x).dtype == jnp.bfloat16
  assert "bias" not in half_vars["params"]


@pytest.mark.parametrize("args,match", [
    ((jnp.ones((2, 4, 4, 3)), jnp.ones((4, 4, 5, 2)), 2, 1), "channels"),
    ((jnp.ones((4, 4, 3)), jnp.ones((4, 4, 3, 2)), 2, 1), "shapes"),
    ((jnp.ones((2, 4, 4, 3)), jnp.ones((4, 4, 3, 2)), 2, -1), "padding"),
    ((jnp.ones((2, 1, 1, 3)), jnp.ones((2, 2, 3, 2)), 1, 1), "empty output"),
])
def test_bad_arguments_raise(args, match):
  with pytest.raises(ValueError, match=match):
    layers.conv_transpose(*args)


def patches(fn):
  """``fn`` traced under the patches formulation."""
  def wrapped(*args):
    with layers.conv_formulation("patches"):
      return fn(*args)
  return wrapped


@pytest.mark.parametrize("h,w,c_in,c_out,k,s,p", [CASES[0], CASES[3], CASES[5], CASES[9]])
def test_patches_formulation_of_conv_transpose_matches(h, w, c_in, c_out, k, s, p):
  x, kernel = inputs(h, w, c_in, c_out, k)
  fn = scalar(ours(s, p))
  chex.assert_trees_all_close(patches(ours(s, p))(x, kernel), ours(s, p)(x, kernel), **TOL)
  chex.assert_trees_all_close(jax.grad(patches(fn), argnums=(0, 1))(x, kernel),
                              jax.grad(fn, argnums=(0, 1))(x, kernel), **TOL)


@pytest.mark.parametrize("strides,padding", [((2, 2), ((1, 1), (1, 1))), ((1, 1), "VALID"),
                                             ((2, 2), "SAME")])
def test_patches_formulation_of_conv_matches_and_batches_kernels(strides, padding):
  """As flax's ``nn.Conv`` hook, forward and gradients equal XLA's convolution; vmapped over
  per-ticket kernels, it holds batched matrix products, no grouped convolution."""
  x, kernel = inputs(6, 6, 3, 4, 4)
  conv = lambda x, kernel: layers.conv_general_dilated(
      x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=HIGHEST)
  chex.assert_trees_all_close(patches(conv)(x, kernel), conv(x, kernel), **TOL)
  grads = jax.grad(scalar(conv), argnums=(0, 1))(x, kernel)
  chex.assert_trees_all_close(jax.grad(patches(scalar(conv)), argnums=(0, 1))(x, kernel), grads,
                              **TOL)
  kernels = jnp.stack([kernel, -kernel])
  batched = jax.vmap(jax.grad(patches(scalar(conv)), argnums=1), in_axes=(None, 0))
  chex.assert_trees_all_close(batched(x, kernels)[1], grads[1], **TOL)   # f(-K) = -f(K)
  text = jax.jit(jax.vmap(patches(conv), in_axes=(None, 0))).lower(x, kernels).as_text()
  assert "feature_group_count = 2" not in text and "dot_general" in text
  with pytest.raises(ValueError, match="unknown convolution formulation 'fft'"):
    with layers.conv_formulation("fft"):
      pass
