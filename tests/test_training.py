"""End-to-end smoke runs of train_and_evaluate and experiments/train.py on real Fashion-MNIST."""
import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from lth_jax import checkpointing, configs, feature_spaces, groups, masks, pruning, runs
from lth_jax import training
from lth_jax import steps as steps_lib
from tests.conftest import needs_fmnist

pytestmark = needs_fmnist
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("family", ["vae", "dcgan"])    # the AE runs the VAE's code path
def test_smoke_run_writes_everything_and_resumes(family, tmp_path):
  config = configs.get_config(family, "fashion_mnist", "smoke")
  workdir = str(tmp_path / family)
  results = training.train_and_evaluate(config, workdir)
  names = os.listdir(workdir)
  for expected in ("config.json", "checkpoints", "metrics.jsonl", "samples.png",
                   "final_metrics.json"):
    assert expected in names
  assert any(n.startswith("events.out.tfevents") for n in names)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))[-1] == str(config.train.steps)
  if family == "ae":
    assert set(results) >= {"recon_mse"}
  else:
    assert "fid_fmnist_clf" in results and "kid_fmnist_clf" in results
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = [json.loads(l) for l in f]
  assert lines[0]["step"] == config.train.log_every
  # Running again resumes from the final checkpoint: no training step is repeated, and the
  # training time it reports is the time saved with the checkpoint, not its own few seconds.
  with checkpointing.Manager(os.path.join(workdir, "checkpoints")) as manager:
    saved_seconds = manager.metadata()["spent"][0]
  assert 0 < saved_seconds <= results["train_seconds"]
  again = training.train_and_evaluate(config, workdir)
  assert again[next(iter(results))] == pytest.approx(results[next(iter(results))])
  assert again["train_seconds"] >= saved_seconds


def test_divergence_is_caught_and_last_good_checkpoint_kept(tmp_path):
  config = configs.get_config("ae", "fashion_mnist", "smoke")
  config.train.optimizer.lr = 1e12
  config.train.update(steps=8, steps_per_call=1, checkpoint_every=1)
  workdir = str(tmp_path / "diverge")
  with pytest.raises(steps_lib.DivergenceError, match=r"after step \d+") as err:
    training.train_and_evaluate(config, workdir)
  bad_step = int(str(err.value).split("after step ")[1].split()[0])
  saved = [int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit()]
  assert saved and max(saved) == bad_step - 1


def test_workdir_of_another_config_is_refused(tmp_path):
  config = configs.get_config("ae", "fashion_mnist", "smoke")
  runs.prepare_workdir(str(tmp_path), config)
  other = configs.get_config("ae", "fashion_mnist", "smoke")
  other.train.steps = 99
  with pytest.raises(runs.WorkdirConflictError, match="train.steps"):
    runs.prepare_workdir(str(tmp_path), other)


def test_a_workdir_keeps_the_feature_space_its_metrics_were_measured_in(tmp_path):
  """The first run records the feature network's weights; a resumed run whose classifier cache
  holds other weights (another machine trained it) is refused before it trains."""
  info = {"weights_sha256": "aaaaaaaaaaaa", "test_accuracy": 0.918, "weights": "/c/clf.msgpack"}
  extractor = feature_spaces.FeatureExtractor("fmnist_clf", None, None, None, info)
  runs.pin_feature_space(str(tmp_path), extractor)
  runs.pin_feature_space(str(tmp_path), extractor)                  # the same weights: fine
  with open(tmp_path / runs.FEATURE_SPACE_FILE) as f:
    assert json.load(f) == {"name": "fmnist_clf", "weights_sha256": "aaaaaaaaaaaa",
                            "test_accuracy": 0.918}
  other = extractor._replace(info={**info, "weights_sha256": "bbbbbbbbbbbb"})
  with pytest.raises(runs.WorkdirConflictError, match="weights aaaaaaaaaaaa, this run's are "
                                                      "bbbbbbbbbbbb"):
    runs.pin_feature_space(str(tmp_path), other)
  runs.pin_feature_space(str(tmp_path / "ae"), None)                # no feature space: no file
  assert not (tmp_path / "ae").exists()


def test_a_resumed_run_may_change_its_checkpoint_cadence(tmp_path):
  config = configs.get_config("ae", "fashion_mnist", "smoke")
  runs.prepare_workdir(str(tmp_path), config)
  config.train.update(checkpoint_every=2, log_every=1)
  runs.prepare_workdir(str(tmp_path), config)          # no conflict: the saved config follows
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["train"]["checkpoint_every"] == 2


def test_a_group_resumes_whole_from_its_checkpoint_and_older_layouts_rebuild(tmp_path):
  """A group checkpoint holds the whole group (states, masks, names, tags, run keys): a resume
  builds no ticket (the kill-and-resume tests show it equals the uninterrupted run). The two
  older layouts (states stacked; one tree per ticket) hold states only: the tickets are rebuilt
  and given the saved states."""
  fam = steps_lib.make_family("ae", channels=1, image_size=32, width=8, z_dim=16,
                              optimizer=dict(lr=1e-3, b1=0.5, b2=0.999), batch_size=8)
  states = [fam.init(jax.random.key(seed)) for seed in (0, 1)]
  dense = masks.init(states[0].params)
  pruned = pruning.magnitude(states[0].params, dense, 0.5)
  tickets = [groups.Ticket("ticket_seed0", states[0], pruned, jax.random.key(7),
                           {"level": 1, "branch": "ticket", "seed": 0}),
             groups.Ticket("random_seed1", states[1], dense, jax.random.PRNGKey(8),
                           {"level": np.int64(1), "branch": "random", "seed": 1})]
  shape = jax.eval_shape(fam.init, jax.random.key(0))
  built = []

  def make_tickets():
    built.append(True)
    return tickets

  got, spent = groups.resume(str(tmp_path / "whole"), lambda: shape, make_tickets)
  assert got is tickets and spent is None and built
  with checkpointing.Manager(tmp_path / "whole") as manager:
    groups.save(manager, 2, tickets, states, groups.Spent(12.5, 20.25))
  built.clear()
  resumed, spent = groups.resume(str(tmp_path / "whole"), lambda: shape, make_tickets)
  assert spent == (12.5, 20.25) and not built   # the time taken before the resume
  for got, want in zip(resumed, tickets):
    assert (got.name, got.tags, got.run_key.dtype) == (want.name, want.tags, want.run_key.dtype)
    assert all(type(v) in (int, str) for v in got.tags.values())   # NumPy scalars as JSON
    chex.assert_trees_all_equal(*(jax.random.key_data(t.run_key) if t is resumed[0]
                                  or t is tickets[0] else t.run_key for t in (got, want)))
    chex.assert_trees_all_equal(got.masks, jax.device_get(want.masks))
    chex.assert_trees_all_equal(got.state, jax.device_get(want.state))
  assert masks.sparsity(resumed[0].masks) == masks.sparsity(tickets[0].masks) > 0.49
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *jax.device_get(states))
  for layout, tree in (("stacked", {groups.STATES_KEY: stacked}),
                       ("per_ticket", {"tickets": states})):
    with checkpointing.Manager(tmp_path / layout) as manager:
      manager.save(2, tree)
    built.clear()
    got, spent = groups.resume(
        str(tmp_path / layout), lambda: shape,
        lambda: make_tickets() and [t._replace(state=shape) for t in tickets])
    assert spent == (0.0, 0.0) and built     # not recorded in the older layouts
    assert isinstance(got[0].state.params["encoder"]["body"]["conv0"]["kernel"], np.ndarray)
    chex.assert_trees_all_equal([t.state for t in got], jax.device_get(states))


def test_binary_with_overrides(tmp_path):
  workdir = tmp_path / "bin"
  cmd = [sys.executable, os.path.join(ROOT, "experiments", "train.py"),
         f"--config={ROOT}/experiments/configs/ae_fmnist.py:smoke", f"--workdir={workdir}",
         "--config.train.steps=4", "--config.train.checkpoint_every=2"]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "JAX_THREEFRY_PARTITIONABLE": "0"})
  assert out.returncode == 0, out.stderr[-3000:]
  with open(workdir / "final_metrics.json") as f:
    assert json.load(f)["step"] == 4   # (bad invocations: test_cli.py)
