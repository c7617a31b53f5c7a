"""Tests for lth_jax.baselines: SNIP, GraSP, SynFlow against independent computations."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from lth_jax import baselines, masks, pruning

RNG = np.random.RandomState(0)
W1 = RNG.normal(size=(3, 4))
B1 = RNG.normal(size=(4,))
W2 = RNG.normal(size=(4, 2))
B2 = RNG.normal(size=(2,))
X = RNG.normal(size=(5, 3))
T = RNG.normal(size=(5, 2))


def mlp_params():
  return {"dense1": {"kernel": jnp.asarray(W1, jnp.float32), "bias": jnp.asarray(B1, jnp.float32)},
          "dense2": {"kernel": jnp.asarray(W2, jnp.float32), "bias": jnp.asarray(B2, jnp.float32)}}


def mlp_loss(p):
  h = jnp.tanh(X @ p["dense1"]["kernel"] + p["dense1"]["bias"])
  return jnp.mean((h @ p["dense2"]["kernel"] + p["dense2"]["bias"] - T) ** 2)


def mlp_loss_np(w1, w2):
  """float64 numpy loss with the fixed biases, for finite differences."""
  return np.mean((np.tanh(X @ w1 + B1) @ w2 + B2 - T) ** 2)


def fd_grad(w1, w2, eps=1e-6):
  grads = []
  for which in (0, 1):
    w = (w1, w2)[which]
    g = np.zeros_like(w)
    for idx in np.ndindex(w.shape):
      up, down = [x.copy() for x in (w1, w2)], [x.copy() for x in (w1, w2)]
      up[which][idx] += eps
      down[which][idx] -= eps
      g[idx] = (mlp_loss_np(*up) - mlp_loss_np(*down)) / (2 * eps)
    grads.append(g)
  return grads


def partial_mask():
  m = masks.init(mlp_params())
  m["dense1"]["kernel"] = m["dense1"]["kernel"].at[0, 1].set(False).at[2, 3].set(False)
  m["dense2"]["kernel"] = m["dense2"]["kernel"].at[1, 0].set(False)
  return m


@pytest.mark.parametrize("pruned", [False, True])
def test_snip_equals_finite_difference_sensitivity(pruned):
  m = partial_mask() if pruned else masks.init(mlp_params())
  s = baselines.snip_scores(mlp_loss, mlp_params(), m)
  assert s["dense1"]["bias"] is None and s["dense2"]["bias"] is None
  w1 = W1 * np.asarray(m["dense1"]["kernel"])
  w2 = W2 * np.asarray(m["dense2"]["kernel"])
  g1, g2 = fd_grad(w1, w2)
  np.testing.assert_allclose(s["dense1"]["kernel"], np.abs(w1 * g1), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(s["dense2"]["kernel"], np.abs(w2 * g2), rtol=1e-4, atol=1e-6)
  if pruned:
    assert float(s["dense1"]["kernel"][0, 1]) == 0.0 and float(s["dense2"]["kernel"][1, 0]) == 0.0


@pytest.mark.parametrize("pruned", [False, True])
def test_grasp_equals_explicit_hessian_contraction(pruned):
  m = partial_mask() if pruned else masks.init(mlp_params())
  scores = baselines.grasp_scores(mlp_loss, mlp_params(), m)
  assert scores["dense1"]["bias"] is None and scores["dense2"]["bias"] is None
  # Independent route: dense Hessian over the kernels only (biases fixed), then θ ⊙ H (g ⊙ m).
  kernels = {"k1": jnp.asarray(W1, jnp.float32) * m["dense1"]["kernel"],
             "k2": jnp.asarray(W2, jnp.float32) * m["dense2"]["kernel"]}
  vec, unravel = ravel_pytree(kernels)
  mvec, _ = ravel_pytree({"k1": m["dense1"]["kernel"].astype(jnp.float32),
                          "k2": m["dense2"]["kernel"].astype(jnp.float32)})

  def loss_of_kernels(v):
    k = unravel(v)
    p = mlp_params()
    p["dense1"]["kernel"], p["dense2"]["kernel"] = k["k1"], k["k2"]
    return mlp_loss(p)

  hessian = jax.hessian(loss_of_kernels)(vec)
  assert hessian.shape == (20, 20)
  expected = unravel(vec * (hessian @ (jax.grad(loss_of_kernels)(vec) * mvec)))
  np.testing.assert_allclose(scores["dense1"]["kernel"], expected["k1"], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(scores["dense2"]["kernel"], expected["k2"], rtol=1e-4, atol=1e-6)
  assert float(jnp.max(jnp.abs(expected["k1"]))) > 1e-3  # non-trivial comparison


def test_grasp_removes_highest_minus_theta_hg():
  # loss = Σ −cos(w): g = sin w, H = diag(cos w), GraSP's S = −w sin w cos w. Only w = 2.0 has
  # S > 0 (cos 2 < 0); it also has the largest |w g|, so SNIP keeps it and GraSP removes it.
  w = jnp.array([[0.3, 0.5, 0.4], [2.0, 0.6, 0.2]])
  params = {"layer": {"kernel": w, "bias": jnp.ones(3)}}
  loss = lambda p: jnp.sum(-jnp.cos(p["layer"]["kernel"])) + jnp.sum(p["layer"]["bias"] ** 2)
  m0 = masks.init(params)
  wn = np.asarray(w, np.float64)
  grasp_s = -wn * np.sin(wn) * np.cos(wn)
  assert np.unravel_index(np.argmax(grasp_s), wn.shape) == (1, 0) and grasp_s[1, 0] > 0
  scores = baselines.grasp_scores(loss, params, m0)
  np.testing.assert_allclose(scores["layer"]["kernel"], -grasp_s, rtol=1e-5, atol=1e-7)
  one = 1 / 6  # remove exactly one of six entries
  grasp = baselines.prune_at_init("grasp", params=params, masks=m0, sparsity=one, loss_fn=loss)
  assert np.argwhere(~np.asarray(grasp["layer"]["kernel"])).tolist() == [[1, 0]]
  assert grasp["layer"]["bias"] is None
  snip = baselines.prune_at_init("snip", params=params, masks=m0, sparsity=one, loss_fn=loss)
  assert bool(snip["layer"]["kernel"][1, 0])
  assert np.argwhere(~np.asarray(snip["layer"]["kernel"])).tolist() == [[1, 2]]  # |0.2 sin 0.2|


def chain_output(params):
  """A ReLU chain with zero (non-prunable) biases on an all-ones input of width n0."""
  names = sorted(params)
  h = jnp.ones((1, params[names[0]]["kernel"].shape[0]))
  for i, name in enumerate(names):
    h = h @ params[name]["kernel"] + params[name]["bias"]
    if i < len(names) - 1:
      h = jax.nn.relu(h)
  return h


def chain_params(weights):
  return {f"l{i:02d}": {"kernel": jnp.asarray(w, jnp.float32), "bias": jnp.zeros(w.shape[1])}
          for i, w in enumerate(weights)}


def chain_scores_np(weights, kept=None):
  """float64 SynFlow scores of a linear chain: |W_l| ⊙ (1ᵀ|W_1..W_{l-1}|)ᵀ (|W_{l+1}..W_L| 1)ᵀ."""
  kept = [np.ones(w.shape, bool) for w in weights] if kept is None else kept
  a = [np.abs(w) * k for w, k in zip(weights, kept)]
  fwd = [np.ones(a[0].shape[0])]
  for x in a:
    fwd.append(fwd[-1] @ x)
  bwd = [np.ones(a[-1].shape[1])]
  for x in reversed(a):
    bwd.insert(0, x @ bwd[0])
  return [x * np.outer(fwd[i], bwd[i + 1]) for i, x in enumerate(a)], fwd[-1].sum()


def test_synflow_single_round_equals_hand_computation():
  w1, w2 = RNG.normal(size=(3, 4)), RNG.normal(size=(4, 2))
  params = chain_params([w1, w2])
  s = baselines.synflow_scores(chain_output, params, masks.init(params))
  assert s["l00"]["bias"] is None and s["l01"]["bias"] is None
  # R = 1ᵀ|W1||W2|1 (flax layout x @ W); ∂R/∂|W1|_ij = (|W2| 1)_j, ∂R/∂|W2|_jk = (1ᵀ|W1|)_j.
  a1, a2 = np.abs(w1), np.abs(w2)
  big_r = np.ones(3) @ a1 @ a2 @ np.ones(2)
  s1 = a1 * (a2 @ np.ones(2))[None, :]
  s2 = (np.ones(3) @ a1)[:, None] * a2
  np.testing.assert_allclose([s1.sum(), s2.sum()], [big_r, big_r])  # conservation per layer
  np.testing.assert_allclose(s["l00"]["kernel"], s1 / (2 * big_r), rtol=1e-5)
  np.testing.assert_allclose(s["l01"]["kernel"], s2 / (2 * big_r), rtol=1e-5)


def test_synflow_scores_do_not_overflow_in_deep_chain():
  depth, width = 30, 16
  weights = [RNG.choice([-1, 1], size=(width, width)) * RNG.uniform(2, 6, size=(width, width))
             for _ in range(depth)]
  params = chain_params(weights)
  naive = jnp.sum(chain_output(jax.tree.map(jnp.abs, params)))
  assert not jnp.isfinite(naive)  # float32 R overflows (R ~ 64^30): the guard is needed
  s = baselines.synflow_scores(chain_output, params, masks.init(params))
  expected, big_r = chain_scores_np(weights)
  total = depth * big_r
  assert 1e50 < total < 1e300
  for i, e in enumerate(expected):
    np.testing.assert_allclose(s[f"l{i:02d}"]["kernel"], e / total, rtol=2e-4, atol=1e-12)


def synflow_reference(weights, sparsity, iterations):
  """Iterative global SynFlow in float64 numpy, with pruning.py's count rounding and tie order."""
  kept = [np.ones(w.shape, bool) for w in weights]
  total = sum(w.size for w in weights)
  density = np.float32(1) - np.float32(sparsity)
  for k in range(1, iterations + 1):
    scores, _ = chain_scores_np(weights, kept)
    if k < iterations:
      target = np.float32(1) - density ** (np.float32(k) / np.float32(iterations))
      count = int(np.round(np.float32(target) * np.float32(total)))
    else:
      count = round(sparsity * total)
    flat_kept = np.concatenate([x.ravel() for x in kept])
    key = np.where(flat_kept, np.concatenate([x.ravel() for x in scores]), -np.inf)
    n_pruned = total - flat_kept.sum()
    rank = np.empty(total, int)
    rank[np.argsort(key, kind="stable")] = np.arange(total)
    flat_new = rank >= n_pruned + max(count - n_pruned, 0)
    kept = np.split(flat_new, np.cumsum([w.size for w in weights])[:-1])
    kept = [x.reshape(w.shape) for x, w in zip(kept, weights)]
  return kept


def test_synflow_iterative_matches_float64_reference():
  weights = [RNG.normal(size=s) for s in [(6, 8), (8, 8), (8, 3)]]
  params = chain_params(weights)
  got = baselines.synflow(chain_output, params, masks.init(params), 0.85, iterations=7)
  want = synflow_reference(weights, 0.85, 7)
  for i, w in enumerate(want):
    np.testing.assert_array_equal(got[f"l{i:02d}"]["kernel"], w)
  kept, total = masks.counts(got)
  assert total - int(kept) == round(0.85 * total) == 116
  # Iterating matters: one-shot SynFlow gives a different mask here.
  one_shot = baselines.synflow(chain_output, params, masks.init(params), 0.85, iterations=1)
  assert float(masks.distance(got, one_shot)) > 0


class SmallNet(nn.Module):
  """Conv-BN-ReLU-Dense: a conv kernel, a dense kernel, and non-prunable bias/BN leaves."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(4, (3, 3))(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    return nn.Dense(5)(x.reshape((x.shape[0], -1)))


@pytest.fixture(scope="module")
def small_net():
  model = SmallNet()
  x = jax.random.normal(jax.random.key(0), (8, 6, 6, 1))
  variables = model.init(jax.random.key(1), x, train=False)
  params, stats = variables["params"], variables["batch_stats"]
  y = jax.random.normal(jax.random.key(2), (8, 5))

  def loss_fn(p):
    out, _ = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                         mutable=["batch_stats"])
    return jnp.mean((out - y) ** 2)

  ones = jnp.ones((1, 6, 6, 1))

  def output_fn(p):
    return model.apply({"params": p, "batch_stats": stats}, ones, train=False)

  return params, loss_fn, output_fn


def run(method, net, m, sparsity, scope="global"):
  params, loss_fn, output_fn = net
  return baselines.prune_at_init(method, params=params, masks=m, sparsity=sparsity,
                                 loss_fn=loss_fn, output_fn=output_fn, scope=scope, iterations=20)


@pytest.mark.parametrize("method", baselines.METHODS)
@pytest.mark.parametrize("sparsity", [0.37, 0.9])
def test_exact_counts_none_leaves_and_determinism(small_net, method, sparsity):
  params = small_net[0]
  m0 = masks.init(params)
  m = run(method, small_net, m0, sparsity)
  assert [x is None for x in jax.tree.leaves(m, is_leaf=lambda x: x is None)] == \
      [x is None for x in jax.tree.leaves(m0, is_leaf=lambda x: x is None)]
  assert m["Conv_0"]["bias"] is None and m["BatchNorm_0"]["scale"] is None
  kept, total = masks.counts(m)
  assert total == 3 * 3 * 4 + 144 * 5
  assert total - int(kept) == round(sparsity * total)
  again = run(method, small_net, m0, sparsity)
  jax.tree.map(np.testing.assert_array_equal, m, again)
  layer = run(method, small_net, m0, sparsity, scope="layerwise")
  for row in masks.summary(layer):
    assert row.total - row.kept == round(sparsity * row.total)


@pytest.mark.parametrize("method", baselines.METHODS)
def test_already_pruned_entries_stay_pruned(small_net, method):
  start = pruning.random(jax.random.key(3), masks.init(small_net[0]), rate=0.3)
  m = run(method, small_net, start, 0.6)
  for old, new in zip(jax.tree.leaves(start), jax.tree.leaves(m)):
    assert not np.any(np.asarray(new) & ~np.asarray(old))
  kept, total = masks.counts(m)
  assert total - int(kept) == round(0.6 * total)


def test_synflow_reuses_compiled_loop_for_new_sparsity(small_net):
  params, _, output_fn = small_net
  baselines.synflow(output_fn, params, masks.init(params), 0.5, iterations=5)
  size = baselines._synflow_rounds._cache_size()
  baselines.synflow(output_fn, params, masks.init(params), 0.8, iterations=5)
  assert baselines._synflow_rounds._cache_size() == size


@pytest.mark.parametrize("method", baselines.METHODS)
def test_arrays_passed_as_args_compile_once_and_equal_a_closure(small_net, method):
  """The lottery scores every seed and level with one function and new arrays: one compile."""
  params, loss_fn, output_fn = small_net
  model = SmallNet()
  stats = model.init(jax.random.key(1), jnp.ones((1, 6, 6, 1)), train=False)["batch_stats"]

  def loss_of(p, batch_stats, x, y):
    out, _ = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                         mutable=["batch_stats"])
    return jnp.mean((out - y) ** 2)

  def output_of(p, batch_stats):
    return model.apply({"params": p, "batch_stats": batch_stats}, jnp.ones((1, 6, 6, 1)),
                       train=False)

  compiled = baselines._synflow_rounds if method == "synflow" else baselines._one_shot_scores
  results = []
  for seed in (0, 1):
    x = jax.random.normal(jax.random.key(seed), (8, 6, 6, 1))
    y = jax.random.normal(jax.random.key(seed + 2), (8, 5))
    results.append(baselines.prune_at_init(
        method, params=params, masks=masks.init(params), sparsity=0.6, iterations=5,
        loss_fn=loss_of, loss_args=(stats, x, y), output_fn=output_of, output_args=(stats,)))
    if seed == 0:
      size = compiled._cache_size()
  assert compiled._cache_size() == size
  closure = baselines.prune_at_init(method, params=params, masks=masks.init(params), sparsity=0.6,
                                    iterations=5, loss_fn=loss_fn, output_fn=output_fn)
  if method != "synflow":   # small_net's loss is on key(0)'s inputs and key(2)'s targets
    x, y = jax.random.normal(jax.random.key(0), (8, 6, 6, 1)), jax.random.normal(
        jax.random.key(2), (8, 5))
    results.append(baselines.prune_at_init(
        method, params=params, masks=masks.init(params), sparsity=0.6,
        loss_fn=loss_of, loss_args=(stats, x, y)))
  chex.assert_trees_all_equal(results[-1], closure)


def test_errors_are_clear(small_net):
  params, loss_fn, output_fn = small_net
  m0 = masks.init(params)
  with pytest.raises(ValueError, match="valid methods are.*snip.*grasp.*synflow"):
    baselines.prune_at_init("magnitude", params=params, masks=m0, sparsity=0.5, loss_fn=loss_fn)
  for method in ("snip", "grasp"):
    with pytest.raises(ValueError, match=f"'{method}' needs loss_fn"):
      baselines.prune_at_init(method, params=params, masks=m0, sparsity=0.5, output_fn=output_fn)
  with pytest.raises(ValueError, match="'synflow' needs output_fn"):
    baselines.prune_at_init("synflow", params=params, masks=m0, sparsity=0.5, loss_fn=loss_fn)
  with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
    baselines.prune_at_init("snip", params=params, masks=m0, sparsity=1.0, loss_fn=loss_fn)
  with pytest.raises(ValueError, match="scope"):
    baselines.prune_at_init("snip", params=params, masks=m0, sparsity=0.5, loss_fn=loss_fn,
                            scope="per-layer")
  with pytest.raises(ValueError, match="float scalar, got shape \\(8, 5\\)"):
    baselines.snip_scores(lambda p: jnp.ones((8, 5)) * p["Dense_0"]["bias"], params, m0)
  with pytest.raises(ValueError, match="iterations must be an int >= 1"):
    baselines.synflow(output_fn, params, m0, 0.5, iterations=0)
  with pytest.raises(masks.MaskMismatchError):
    baselines.synflow(output_fn, params, {"Conv_0": m0["Conv_0"]}, 0.5)
  with pytest.raises(FloatingPointError, match="pre-activation output"):
    baselines.synflow(lambda p: jax.lax.stop_gradient(output_fn(p)), params, m0, 0.5, iterations=3)
