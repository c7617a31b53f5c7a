"""Tests for lth_jax.masks: structure, apply, counts, distance, summary, save/load, errors."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lth_jax import masks


def toy_params(seed=0):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  return {"dense": {"kernel": jax.random.normal(k1, (6, 5)), "bias": jnp.ones(5)},
          "conv": {"kernel": jax.random.normal(k2, (3, 3, 2, 4))},
          "layers": [jax.random.normal(k3, (4, 4)), jnp.zeros(4)]}


def test_init_default_prunes_kernels_only():
  m = masks.init(toy_params())
  assert m["dense"]["bias"] is None and m["layers"][1] is None
  assert m["dense"]["kernel"].dtype == jnp.bool_ and bool(jnp.all(m["conv"]["kernel"]))
  assert m["layers"][0].shape == (4, 4)


def test_init_custom_predicate_sees_paths():
  seen = []
  m = masks.init(toy_params(), prunable=lambda p, x: seen.append(p) or p.startswith("conv"))
  assert "dense/kernel" in seen and "layers/0" in seen
  assert m["dense"]["kernel"] is None and m["conv"]["kernel"] is not None


def test_apply_zeroes_pruned_and_passes_none_leaves():
  params = toy_params()
  m = masks.init(params)
  m["dense"]["kernel"] = m["dense"]["kernel"].at[0].set(False)
  out = masks.apply(params, m)
  np.testing.assert_array_equal(out["dense"]["kernel"][0], 0.0)
  np.testing.assert_array_equal(out["dense"]["kernel"][1:], params["dense"]["kernel"][1:])
  assert out["dense"]["bias"] is params["dense"]["bias"]


def test_sparsity_counts_and_distance():
  m = masks.init(toy_params())
  total = 30 + 72 + 16
  assert float(masks.sparsity(m)) == 0.0
  m2 = jax.tree.map(lambda x: x, m, is_leaf=lambda x: x is None)
  m2["conv"]["kernel"] = jnp.zeros((3, 3, 2, 4), bool)
  assert float(masks.sparsity(m2)) == pytest.approx(72 / total)
  assert float(masks.distance(m, m2)) == pytest.approx(72 / total)
  assert float(masks.distance(m2, m2)) == 0.0
  kept, tot = masks.counts(m2)
  assert int(kept) == total - 72 and tot == total


def test_summary_rows_and_table():
  m = masks.init(toy_params())
  m["dense"]["kernel"] = m["dense"]["kernel"].at[:3].set(False)
  rows = masks.summary(m)
  row = {r.path: r for r in rows}["dense/kernel"]
  assert (row.shape, row.kept, row.total) == ((6, 5), 15, 30)
  assert row.sparsity == pytest.approx(0.5)
  text = str(rows)
  assert "dense/kernel" in text and "TOTAL" in text and "50.00%" in text


def test_linen_params():
  model = nn.Sequential([nn.Conv(4, (3, 3)), nn.Dense(3)])
  params = model.init(jax.random.key(0), jnp.ones((1, 8, 8, 2)))["params"]
  m = masks.init(params)
  assert m["layers_0"]["kernel"].shape == (3, 3, 2, 4) and m["layers_0"]["bias"] is None
  out = masks.apply(params, jax.tree.map(lambda x: jnp.zeros_like(x), m))
  assert float(jnp.abs(out["layers_1"]["kernel"]).sum()) == 0.0
  np.testing.assert_array_equal(out["layers_1"]["bias"], params["layers_1"]["bias"])


def test_nnx_state_and_pure_dict():
  model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
  _, state = nnx.split(model, nnx.Param)
  for params in (state, state.to_pure_dict()):
    m = masks.init(params)
    m0 = jax.tree.map(jnp.zeros_like, m)
    out = masks.apply(params, m0)
    leaves = masks.leaves_with_paths(out)
    kernel = [x for p, x in leaves if p.endswith("kernel")][0]
    bias = [x for p, x in leaves if p.endswith("bias")][0]
    assert [p for p, _ in leaves] == ["bias", "kernel"]
    assert float(jnp.abs(kernel).sum()) == 0.0 and bias.shape == (3,)
    assert float(masks.sparsity(m0)) == 1.0


def test_mismatch_errors_name_the_path():
  params = toy_params()
  m = masks.init(params)
  bad_shape = dict(m, conv={"kernel": jnp.ones((3, 3, 2, 5), bool)})
  with pytest.raises(masks.MaskMismatchError, match="conv/kernel"):
    masks.apply(params, bad_shape)
  missing = {k: v for k, v in m.items() if k != "dense"}
  with pytest.raises(masks.MaskMismatchError, match="dense/bias"):
    masks.apply(params, missing)


def test_save_load_roundtrip_and_no_overwrite(tmp_path):
  params = toy_params()
  m = masks.init(params)
  m["layers"][0] = m["layers"][0].at[1].set(False)
  path = tmp_path / "m.npz"
  masks.save(path, m)
  with pytest.raises(FileExistsError, match="m.npz"):
    masks.save(path, m)
  back = masks.load(path, like=params)
  assert back["dense"]["bias"] is None
  for a, b in zip(jax.tree.leaves(m), jax.tree.leaves(back)):
    np.testing.assert_array_equal(a, b)
  plain = masks.load(path)
  np.testing.assert_array_equal(plain["conv"]["kernel"], m["conv"]["kernel"])
  assert plain["dense"]["bias"] is None


def test_load_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="nothing.npz"):
    masks.load(tmp_path / "nothing.npz")
  bogus = tmp_path / "bogus.npz"
  np.savez(bogus, a=np.ones(3))
  with pytest.raises(ValueError, match="not a mask file"):
    masks.load(bogus)
  path = masks.save(tmp_path / "m.npz", masks.init(toy_params()))
  with pytest.raises(masks.MaskMismatchError, match="does not fit"):
    masks.load(path, like={"other": jnp.ones((2, 2))})
