"""Tests for lth_jax.checkpointing: round trips, None leaves, optax, steps, crashes, shardings."""
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lth_jax import checkpointing


def toy_tree(seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {"params": {"conv": {"kernel": jax.random.normal(k1, (3, 3, 2, 4)), "bias": jnp.zeros(4)},
                     "dense": {"kernel": jax.random.normal(k2, (8, 5), jnp.bfloat16)}},
          "mask": {"conv": {"kernel": jax.random.bernoulli(k1, 0.5, (3, 3, 2, 4)), "bias": None},
                   "dense": {"kernel": jnp.ones((8, 5), bool)}},
          "counts": jnp.arange(6, dtype=jnp.int32),
          "layers": [np.full((2,), 7, np.int8), None]}


def assert_identical(a, b):
  chex.assert_trees_all_equal_structs(a, b)
  chex.assert_trees_all_equal_dtypes(a, b)
  chex.assert_trees_all_equal(a, b, strict=True)


def adam_state(params):
  opt = optax.adam(1e-2)
  state = opt.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  _, state = opt.update(grads, state, params)
  return state


def test_save_load_tree_bit_identical_with_none_bool_int_leaves(tmp_path):
  tree = toy_tree()
  path = checkpointing.save_tree(tmp_path / "rewind", tree)
  assert path == str(tmp_path / "rewind")
  loaded = checkpointing.load_tree(path)
  assert loaded["mask"]["conv"]["bias"] is None and loaded["layers"][1] is None
  assert_identical(loaded, tree)
  assert_identical(checkpointing.load_tree(path, like=tree), tree)


def test_load_tree_like_sets_dtype_and_accepts_abstract_leaves(tmp_path):
  tree = toy_tree()
  checkpointing.save_tree(tmp_path / "t", tree)
  like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
  like["params"]["conv"]["kernel"] = jax.ShapeDtypeStruct((3, 3, 2, 4), jnp.bfloat16)
  loaded = checkpointing.load_tree(tmp_path / "t", like=like)
  assert loaded["params"]["conv"]["kernel"].dtype == jnp.bfloat16
  assert loaded["mask"]["conv"]["bias"] is None
  np.testing.assert_array_equal(loaded["counts"], tree["counts"])


def test_optax_adam_state_round_trip_with_like(tmp_path):
  params = toy_tree()["params"]
  state = adam_state(params)
  checkpointing.save_tree(tmp_path / "opt", {"params": params, "opt_state": state})
  like = {"params": params, "opt_state": adam_state(jax.tree.map(jnp.zeros_like, params))}
  loaded = checkpointing.load_tree(tmp_path / "opt", like=like)
  assert isinstance(loaded["opt_state"][0], optax.ScaleByAdamState)
  assert int(loaded["opt_state"][0].count) == 1
  assert_identical(loaded, {"params": params, "opt_state": state})


def test_save_tree_refuses_to_overwrite_unless_asked(tmp_path):
  path = tmp_path / "level_1"
  checkpointing.save_tree(path, {"w": jnp.ones(3)})
  with pytest.raises(FileExistsError, match="level_1.*overwrite=True"):
    checkpointing.save_tree(path, {"w": jnp.zeros(3)})
  np.testing.assert_array_equal(checkpointing.load_tree(path)["w"], 1.0)
  checkpointing.save_tree(path, {"w": jnp.zeros(3)}, overwrite=True)
  np.testing.assert_array_equal(checkpointing.load_tree(path)["w"], 0.0)


def test_load_tree_missing_path_names_it(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    checkpointing.load_tree(tmp_path / "nowhere")


def test_errors_for_empty_tree_and_mismatched_like(tmp_path):
  with pytest.raises(ValueError, match="empty tree"):
    checkpointing.save_tree(tmp_path / "empty", {})
  checkpointing.save_tree(tmp_path / "t", {"w": jnp.ones(3)})
  with pytest.raises(ValueError, match="does not match"):
    checkpointing.load_tree(tmp_path / "t", like={"w": jnp.ones(3), "extra": jnp.ones(2)})
  with pytest.raises(ValueError, match="does not match"):
    checkpointing.load_tree(tmp_path / "t", like={"w": jnp.ones(4)})


def test_unfinished_save_tree_is_ignored_and_replaced(tmp_path):
  """A process killed mid-write leaves only `<path>.orbax-checkpoint-tmp`, as Orbax names it."""
  checkpointing.save_tree(tmp_path / "donor", {"w": jnp.ones(3)})
  path = tmp_path / "rewind"
  shutil.copytree(tmp_path / "donor", tmp_path / "rewind.orbax-checkpoint-tmp")
  with pytest.raises(FileNotFoundError, match="unfinished"):
    checkpointing.load_tree(path)
  checkpointing.save_tree(path, {"w": jnp.full(3, 2.0)})  # no overwrite=True needed
  np.testing.assert_array_equal(checkpointing.load_tree(path)["w"], 2.0)
  assert not (tmp_path / "rewind.orbax-checkpoint-tmp").exists()


def test_manager_steps_metadata_and_latest(tmp_path):
  with checkpointing.Manager(tmp_path / "ckpt") as mngr:
    assert mngr.latest_step() is None and mngr.all_steps() == []
    for step in range(3):
      assert mngr.save(step, {"w": jnp.full(3, float(step)), "m": None},
                       metadata={"level": step, "branch": "ticket"})
    assert mngr.latest_step() == 2 and mngr.all_steps() == [0, 1, 2]
    tree, meta = mngr.restore()
    np.testing.assert_array_equal(tree["w"], 2.0)
    assert tree["m"] is None and meta == {"level": 2, "branch": "ticket"}
    tree, meta = mngr.restore(1, like={"w": jnp.zeros(3), "m": None})
    np.testing.assert_array_equal(tree["w"], 1.0)
    assert meta["level"] == 1
  with checkpointing.Manager(tmp_path / "ckpt") as mngr:  # a new process resumes
    assert mngr.latest_step() == 2
    tree, meta = mngr.restore()
    np.testing.assert_array_equal(tree["w"], 2.0)


def test_manager_optax_state_round_trip(tmp_path):
  params = toy_tree()["params"]
  state = {"params": params, "opt_state": adam_state(params), "step": jnp.int32(5)}
  with checkpointing.Manager(tmp_path / "ckpt") as mngr:
    mngr.save(5, state)
    restored, meta = mngr.restore(like=state)
  assert meta == {}
  assert isinstance(restored["opt_state"][0], optax.ScaleByAdamState)
  assert_identical(restored, state)


def test_manager_interval_max_to_keep_and_errors(tmp_path):
  with checkpointing.Manager(tmp_path / "ckpt", max_to_keep=2, save_interval_steps=10) as mngr:
    assert mngr.save(0, {"w": jnp.zeros(2)})
    assert not mngr.save(5, {"w": jnp.zeros(2)})  # not due
    assert mngr.save(5, {"w": jnp.zeros(2)}, force=True)
    assert mngr.save(10, {"w": jnp.zeros(2)})
    mngr.wait()
    assert mngr.all_steps() == [5, 10]
    with pytest.raises(FileExistsError, match="ckpt/10"):
      mngr.save(10, {"w": jnp.zeros(2)}, force=True)
    with pytest.raises(FileNotFoundError, match=r"step 3 .*\[5, 10\]"):
      mngr.restore(3)
    with pytest.raises(TypeError, match="JSON"):
      mngr.save(20, {"w": jnp.zeros(2)}, metadata={"x": np.zeros(2)})
    with pytest.raises(ValueError, match="empty tree"):
      mngr.save(20, {})
    with pytest.raises(ValueError, match="does not match"):
      mngr.restore(like={"v": jnp.zeros(2)})
  with checkpointing.Manager(tmp_path / "empty") as mngr:
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
      mngr.restore()
  with pytest.raises(ValueError, match="save_interval_steps"):
    checkpointing.Manager(tmp_path / "bad", save_interval_steps=0)


def test_manager_ignores_checkpoint_interrupted_mid_write(tmp_path):
  root = tmp_path / "ckpt"
  with checkpointing.Manager(root) as mngr:
    mngr.save(1, {"w": jnp.ones(3)})
    mngr.save(2, {"w": jnp.full(3, 2.0)})
  # What a process killed while writing step 3 leaves: a temporary directory, partly written.
  shutil.copytree(root / "2", root / "3.orbax-checkpoint-tmp")
  shutil.rmtree(root / "3.orbax-checkpoint-tmp" / "metadata")
  os.remove(root / "3.orbax-checkpoint-tmp" / "commit_success.txt")
  with checkpointing.Manager(root) as mngr:
    assert mngr.latest_step() == 2 and mngr.all_steps() == [1, 2]
    tree, _ = mngr.restore()
    np.testing.assert_array_equal(tree["w"], 2.0)
    assert mngr.save(3, {"w": jnp.full(3, 3.0)}, metadata={"resumed": True})
    tree, meta = mngr.restore(3)
  np.testing.assert_array_equal(tree["w"], 3.0)
  assert meta == {"resumed": True}
  assert sorted(os.listdir(root)) == ["1", "2", "3"]


def test_restore_onto_mesh_sharding(tmp_path):
  n = len(jax.devices())
  mesh = jax.make_mesh((n,), ("ticket",))
  sharded = NamedSharding(mesh, P("ticket"))
  replicated = NamedSharding(mesh, P())
  tree = {"w": jax.device_put(jnp.arange(4.0 * n).reshape(2 * n, 2), sharded), "mask": None,
          "b": jnp.ones(3)}
  like = {"w": jax.ShapeDtypeStruct((2 * n, 2), jnp.float32, sharding=sharded), "mask": None,
          "b": jax.ShapeDtypeStruct((3,), jnp.float32, sharding=replicated)}
  checkpointing.save_tree(tmp_path / "t", tree)
  loaded = checkpointing.load_tree(tmp_path / "t", like=like)
  assert loaded["w"].sharding == sharded and loaded["b"].sharding == replicated
  assert loaded["mask"] is None
  np.testing.assert_array_equal(loaded["w"], tree["w"])
  with checkpointing.Manager(tmp_path / "ckpt") as mngr:
    mngr.save(0, tree)
    restored, _ = mngr.restore(like=tree)  # concrete `like`: its shardings are used
  assert restored["w"].sharding == sharded
  np.testing.assert_array_equal(restored["w"], tree["w"])
