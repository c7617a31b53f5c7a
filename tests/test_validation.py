"""validation.check (every field of every binary, table-driven), config_fields' parsers,
configs.for_binary; and the user errors of a run (one line, exit 2) that the checks cannot see
in advance."""
import importlib.util
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from lth_jax import config_fields, configs, data, evaluation, experiment_main, feature_spaces
from lth_jax import validation
from lth_jax.models import classifier as classifier_lib
from lth_jax.models import inception

BINARIES = tuple(configs.SECTIONS)


def _with(config, **fields):
  """A copy of ``config`` with ``fields`` ('train__steps': value) set, bypassing type safety."""
  d = config.to_dict()
  for path, value in fields.items():
    *parents, last = path.split("__")
    node = d
    for key in parents:
      node = node[key]
    if value is _DELETE:
      del node[last]
    else:
      node[last] = value
  return ml_collections.ConfigDict(d)


_DELETE = object()


@pytest.mark.parametrize("family", ["ae", "vae", "dcgan"])
@pytest.mark.parametrize("preset", configs.PRESETS)
@pytest.mark.parametrize("binary", BINARIES)
def test_shipped_configs_pass(family, preset, binary):
  config = configs.get_config(family, "fashion_mnist", preset)
  if binary == "transfer":
    if family == "ae":
      return
    config.transfer.direction = "vae_to_gan" if family == "vae" else "gan_to_vae"
  validation.check(config, binary)
  validation.check(configs.for_binary(config, binary), binary)


def test_inception_weights_file_must_exist(tmp_path):
  config = configs.get_config("dcgan", "cifar10", "smoke")   # feature_space='inception'
  with pytest.raises(config_fields.ConfigError, match="needs eval.inception_weights"):
    validation.check(config, "train")
  config.eval.inception_weights = str(tmp_path / "missing.npz")
  with pytest.raises(config_fields.ConfigError, match="eval.inception_weights=.* is not a file"):
    validation.check(config, "train")
  (tmp_path / "missing.npz").write_bytes(b"")
  validation.check(config, "train")


# (binary, family, fields, message): each config is the family's smoke config with ``fields``.
CASES = [
    ("train", "ae", dict(family="nope"), "family: unknown model family 'nope'"),
    ("train", "ae", dict(family=3), "family must be a str"),
    ("train", "ae", dict(seed=-1), "seed must be >= 0"),
    ("train", "ae", dict(seed="0"), r"seed must be an int, got '0' \(str\)"),
    ("train", "ae", dict(lotery={}), "lotery is not a config field or section"),
    ("train", "ae", dict(data=_DELETE), "the config has no data section"),
    ("train", "ae", dict(data__name="svhn"), "unknown data.name 'svhn'"),
    ("train", "ae", dict(data__image_size=28), "data.image_size=28 is not available"),
    ("train", "ae", dict(data__image_size=64), "data.image_size=64 is not available"),
    ("train", "ae", dict(data__source="web"), "unknown data.source 'web'"),
    ("train", "ae", dict(data__name="cifar10", data__source="idx"), "data.source='idx' exists"),
    ("train", "ae", dict(data__download="yes"), "data.download must be a bool"),
    ("train", "ae", dict(data__data_dir=None), "data.data_dir must be a str"),
    ("train", "ae", dict(data__limit=-1), "data.limit must be >= 0, got -1"),
    ("train", "ae", dict(data__limt=5), "data.limt is not a config field"),
    ("train", "ae", dict(model__width=0), "model.width must be >= 1"),
    ("train", "ae", dict(model__z_dim=2.5), "model.z_dim must be an int"),
    ("train", "ae", dict(loss__kind="least_squares"), "unknown loss.kind 'least_squares'"),
    ("train", "dcgan", dict(loss__gradient_penalty=-1.0), "loss.gradient_penalty must be >= 0"),
    ("train", "dcgan", dict(train__n_critic=0), "train.n_critic must be >= 1, got 0"),
    ("train", "dcgan", dict(train__clip=-0.01), "train.clip must be >= 0"),
    ("train", "ae", dict(train__n_critic=5), "train.n_critic=5 applies to GAN families only"),
    ("train", "vae", dict(loss__gradient_penalty=10.0),
     "loss.gradient_penalty=10.0 applies to GAN families only"),
    ("train", "ae", dict(train__optimizer__kind="sgd"), "unknown train.optimizer.kind 'sgd'"),
    ("train", "ae", dict(loss__beta=-1.0), "loss.beta must be >= 0"),
    ("train", "ae", dict(loss__beta="4"), "loss.beta must be a number"),
    ("train", "ae", dict(train__steps=0), "train.steps must be >= 1, got 0"),
    ("train", "ae", dict(train__steps="5"), "train.steps must be an int"),
    ("train", "ae", dict(train__steps=True), "train.steps must be an int"),
    ("train", "ae", dict(train__batch_size=0), "train.batch_size must be >= 1, got 0"),
    ("train", "ae", dict(train__steps_per_call=0), "train.steps_per_call must be >= 1"),
    ("train", "ae", dict(train__log_every=-1), "train.log_every must be >= 0"),
    ("train", "ae", dict(train__checkpoint_every=-1), "train.checkpoint_every must be >= 0"),
    ("train", "ae", dict(train__optimizer__lr=0.0), "train.optimizer.lr must be > 0, got 0.0"),
    ("train", "ae", dict(train__optimizer__lr=float("nan")), "train.optimizer.lr must be > 0"),
    ("train", "ae", dict(train__optimizer__lr=float("inf")), "train.optimizer.lr must be > 0"),
    ("train", "ae", dict(train__optimizer__b1=1.0), r"train.optimizer.b1 must be in \[0, 1\)"),
    ("train", "ae", dict(train__optimizer__b2=-0.1), r"train.optimizer.b2 must be in \[0, 1\)"),
    ("train", "ae", dict(train__optimizer__weight_decay=-1e-4),
     "train.optimizer.weight_decay must be >= 0"),
    ("train", "ae", dict(train__optimizer__momentum=0.9), "train.optimizer.momentum is not a"),
    ("train", "ae", dict(eval__feature_space="pixels"), "unknown eval.feature_space 'pixels'"),
    ("train", "ae", dict(eval__num_samples=1), "eval.num_samples must be >= 10"),
    ("train", "vae", dict(eval__num_samples=9),
     r"eval.num_samples must be >= 10 \(the Inception Score's 10 splits\), got 9"),
    ("train", "ae", dict(eval__num_samples=10.0), "eval.num_samples must be an int"),
    ("train", "ae", dict(eval__num_test=0), "eval.num_test must be >= 2"),
    ("train", "ae", dict(eval__batch_size=0), "eval.batch_size must be >= 1"),
    ("train", "ae", dict(eval__grid_size=1), "eval.grid_size must be >= 2"),
    ("train", "dcgan", dict(eval__grid_size=0), "eval.grid_size must be >= 1"),
    ("train", "ae", dict(eval__classifier_steps=0), "eval.classifier_steps must be >= 1"),
    ("train", "ae", dict(eval__cache_dir=1), "eval.cache_dir must be a str"),
    ("train", "ae", dict(prune__parts={"generator": True}), "prune.parts names 'generator'"),
    ("train", "dcgan", dict(prune__parts={"generator": "yes"}), "prune.parts.generator must be"),
    ("train", "dcgan", dict(prune__exclude="generator/convt0"), "prune.exclude must be a tuple"),
    ("train", "dcgan", dict(prune__exclude=("encoder/conv0",)), "prune.exclude entry 'encoder"),
    # A comma list from the command line is one string, which matches no layer.
    ("find_tickets", "dcgan", dict(prune__exclude=("generator/convt0,discriminator/head",)),
     (r"prune.exclude entry 'generator/convt0,discriminator/head' matches no layer of dcgan \(a "
      r"comma list on the command line is one string: quote each entry")),
    ("train", "dcgan", dict(prune__exclude=("generator/bn0",)),
     ("prune.exclude entry 'generator/bn0' matches no layer of dcgan; its layers: "
      "discriminator/body/conv0, .*, generator/convt3$")),
    ("early_bird", "vae", dict(prune__exclude=("encoder/head", "decoder/convt")),
     "prune.exclude entry 'decoder/convt' matches no layer of vae"),
    ("transfer", "vae", dict(prune__exclude=("decoder/convt9",)), "entry 'decoder/convt9' matches"),
    ("find_tickets", "ae", dict(prune__exclude=("encoder", "decoder")),
     (r"prune.parts and prune.exclude leave nothing to prune: pruned parts \['decoder', "
      r"'encoder'\]")),
    ("early_bird", "dcgan", dict(prune__parts={"generator": True, "discriminator": False},
                                 prune__exclude=("generator",)), "leave nothing to prune"),
    ("train", "vae", dict(prune__parts={"encoder": False, "decoder": False}),
     r"leave nothing to prune: pruned parts \[\], exclude \[\]; switch a part on"),
    ("train", "ae", dict(prune__scope="local"), "unknown prune.scope 'local'"),
    ("find_tickets", "ae", dict(prune__parts={"encoder": False, "decoder": False}),
     "prune.parts switches every part off"),
    ("find_tickets", "ae", dict(lottery=_DELETE), "the config has no lottery section"),
    ("find_tickets", "ae", dict(tickets__seeds=()), "tickets.seeds is empty"),
    ("find_tickets", "ae", dict(tickets__seeds=(0, 0)), "tickets.seeds has repeats"),
    ("find_tickets", "ae", dict(tickets__seeds=("a",)), "tickets.seeds must be a tuple of ints"),
    ("find_tickets", "ae", dict(tickets__seeds=3), "tickets.seeds must be a tuple of ints"),
    ("find_tickets", "ae", dict(tickets__execution="pmap"), "unknown tickets.execution 'pmap'"),
    ("find_tickets", "ae", dict(tickets__data_parallel=0), "tickets.data_parallel must be >= 1"),
    ("find_tickets", "ae", dict(tickets__data_parallel=3),
     "tickets.data_parallel=3 does not divide train.batch_size=16"),
    ("find_tickets", "ae", dict(lottery__levels=-1), "lottery.levels must be >= 0"),
    ("find_tickets", "ae", dict(lottery__rate=1.0), r"lottery.rate must be in \(0, 1\)"),
    ("find_tickets", "ae", dict(lottery__rate=0), r"lottery.rate must be in \(0, 1\)"),
    ("find_tickets", "ae", dict(lottery__rewind_step="2 epochs"),
     "lottery.rewind_step='2 epochs' is not a step count"),
    ("find_tickets", "ae", dict(lottery__rewind_step=2.5), "lottery.rewind_step=2.5 is not"),
    ("find_tickets", "ae", dict(lottery__rewind_step="6it"),
     r"lottery.rewind_step='6it' is step 6, not before the end of training \(train.steps=6\)"),
    ("find_tickets", "ae", dict(lottery__rewind_step="1ep"), "is step 32, not before"),
    ("find_tickets", "ae", dict(train__steps=-5, lottery__rewind_step="9it"),
     "train.steps must be >= 1, got -5"),
    ("find_tickets", "ae", dict(lottery__rewind_optimizer=1), "lottery.rewind_optimizer must be"),
    ("find_tickets", "ae", dict(lottery__branches=("ticket", "magic")),
     r"unknown lottery.branches \['magic'\]"),
    ("find_tickets", "ae", dict(lottery__branches=("snip",)), "must contain 'ticket'"),
    ("find_tickets", "ae", dict(lottery__branches=("ticket", "ticket")),
     "lottery.branches has repeats"),
    ("find_tickets", "ae", dict(lottery__synflow_iterations=0),
     "lottery.synflow_iterations must be >= 1"),
    ("find_tickets", "ae", dict(lottery__branch_levels="snip:1"),
     "lottery.branch_levels group 'snip:1' is not 'branches=levels'"),
    ("find_tickets", "ae", dict(lottery__branch_levels="ticket=1"),
     "lottery.branch_levels names 'ticket', which is not a baseline"),
    ("find_tickets", "ae",
     dict(lottery__branches=("ticket", "snip"), lottery__branch_levels="grasp=1"),
     "lottery.branch_levels names 'grasp'"),
    ("find_tickets", "ae", dict(lottery__branch_levels="snip=1;snip=2"),
     "lottery.branch_levels names 'snip' twice"),
    ("find_tickets", "ae", dict(lottery__branch_levels="snip=0,2"),
     r"lottery.branch_levels levels \[0\] are outside \[1, lottery.levels=2\]"),
    ("early_bird", "ae", dict(early_bird=_DELETE), "the config has no early_bird section"),
    ("early_bird", "ae", dict(early_bird__kind="channel"), "unknown early_bird.kind 'channel'"),
    ("early_bird", "ae", dict(early_bird__sparsity=1.0),
     r"early_bird.sparsity must be in \(0, 1\)"),
    ("early_bird", "ae", dict(early_bird__part_sparsity="generator=0.5"),
     "early_bird.part_sparsity names 'generator'"),
    ("early_bird", "ae", dict(early_bird__part_sparsity="encoder:0.5"),
     "early_bird.part_sparsity entry 'encoder:0.5' is not"),
    ("early_bird", "ae", dict(early_bird__part_sparsity="encoder=1.5"),
     "early_bird.part_sparsity of 'encoder' must be in"),
    ("early_bird", "ae", dict(early_bird__interval=0), "early_bird.interval must be >= 1"),
    ("early_bird", "ae", dict(early_bird__window=1), "early_bird.window must be >= 2"),
    ("early_bird", "ae", dict(early_bird__epsilon=1.5), r"early_bird.epsilon must be in \[0, 1\]"),
    ("early_bird", "ae", dict(early_bird__bn_l1=-1.0), "early_bird.bn_l1 must be >= 0"),
    ("early_bird", "ae", dict(early_bird__max_search_steps=-1),
     "early_bird.max_search_steps must be >= 0"),
    ("early_bird", "ae", dict(early_bird__max_search_steps=7),
     "early_bird.max_search_steps=7 exceeds train.steps=6"),
    ("early_bird", "ae", dict(early_bird__ticket_steps=-1), "early_bird.ticket_steps must be >= 0"),
    ("early_bird", "ae", dict(early_bird__rewind="no"), "early_bird.rewind must be a bool"),
    ("early_bird", "ae", dict(early_bird__imp_levels=-1), "early_bird.imp_levels must be >= 0"),
    ("early_bird", "ae", dict(lottery__rate=2.0), "lottery.rate must be in"),
    ("transfer", "vae", dict(transfer__direction="sideways"),
     "unknown transfer.direction 'sideways'"),
    ("transfer", "ae", dict(), "transfer.direction='vae_to_gan' needs a vae config"),
    ("transfer", "vae", dict(transfer__init_from="scratch"), "unknown transfer.init_from"),
    ("transfer", "vae", dict(transfer__with_discriminator=0), "transfer.with_discriminator must"),
    ("transfer", "vae", dict(tickets__seeds=(1, 1)), "tickets.seeds has repeats"),
]


@pytest.mark.parametrize("binary, family, fields, message", CASES,
                         ids=[f"{c[0]}-{'-'.join(c[2]) or c[1]}" for c in CASES])
def test_bad_field_is_named(binary, family, fields, message):
  config = _with(configs.get_config(family, "fashion_mnist", "smoke"), **fields)
  with pytest.raises(config_fields.ConfigError, match=message):
    validation.check(config, binary)


def test_exclude_entries_that_cover_kernels_pass():
  config = configs.get_config("dcgan", "fashion_mnist", "smoke")
  config.prune.exclude = ("discriminator/body", "generator/convt0/kernel", "generator/convt3")
  validation.check(config, "find_tickets")
  config.prune.parts.discriminator = False      # an entry of an unpruned part is still a layer
  config.prune.exclude = ("discriminator/head",)
  validation.check(config, "early_bird")


def test_checks_start_no_jax_backend():
  """The model's layers come from jax.eval_shape without starting a backend: experiment_main
  checks the config before jax.distributed.initialize, which must come first."""
  code = ("from jax._src import xla_bridge\n"
          "from lth_jax import configs, validation\n"
          "for family in ('ae', 'vae', 'dcgan'):\n"
          "  config = configs.get_config(family, 'fashion_mnist', 'smoke')\n"
          "  validation.check(config, 'find_tickets')\n"
          "assert not xla_bridge._backends, 'a JAX backend was started'\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"}, check=False)
  assert out.returncode == 0, out.stderr[-2000:]


def _fake_split(n: int, size: int = 32) -> data.Split:
  return data.Split(np.zeros((n, size, size, 1), np.uint8), np.arange(n, dtype=np.int32) % 10)


def test_data_limit_below_the_classifier_batch_needs_a_cached_classifier(tmp_path, monkeypatch):
  ae = configs.get_config("ae", "fashion_mnist", "smoke")
  ae.data.limit = 127
  validation.check(ae, "train")                # a family that does not generate: no classifier
  config = configs.get_config("vae", "fashion_mnist", "smoke")
  config.eval.cache_dir = str(tmp_path)
  config.data.limit = 127
  with pytest.raises(config_fields.ConfigError,
                     match=r"data.limit=127 leaves 127 training images, fewer than the feature "
                           r"classifier's batch of 128 .*not cached in .*; set data.limit >= 128"):
    validation.check(config, "train")
  config.eval.feature_space = "inception"      # no classifier: the limit is not its business
  config.eval.inception_weights = str(tmp_path / "w.npz")
  (tmp_path / "w.npz").write_bytes(b"")
  validation.check(config, "train")

  # Cache a classifier where the run would (training stubbed): then the small limit is fine.
  def fake_training(train_images, train_labels, test_images, test_labels, *, key, steps,
                    num_classes, **kwargs):
    model = classifier_lib.Classifier(num_classes=num_classes, width=kwargs["width"],
                                      feature_dim=kwargs["feature_dim"])
    shapes = jax.eval_shape(model.init, key, train_images[:1].astype(np.float32))["params"]
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes), 0.5

  monkeypatch.setattr(feature_spaces, "train_classifier", fake_training)
  config.eval.feature_space = "classifier"
  evaluation.feature_extractor_from_config(config, _fake_split(127), _fake_split(20))
  validation.check(config, "train")
  config.eval.classifier_steps += 1            # another classifier: not cached
  with pytest.raises(config_fields.ConfigError, match="data.limit=127"):
    validation.check(config, "train")


def test_inception_weights_path_with_tilde_is_expanded_when_loading(tmp_path, monkeypatch):
  monkeypatch.setenv("HOME", str(tmp_path))
  np.savez(tmp_path / "w.npz", other=np.zeros(3, np.float32))
  config = configs.get_config("dcgan", "cifar10", "smoke")
  config.eval.inception_weights = "~/w.npz"
  validation.check(config, "train")
  # The loader finds the file too (it is not the FID state dict: the key error says so).
  with pytest.raises(inception.MissingWeightsKeyError, match=f"from {tmp_path}/w.npz lack key"):
    inception.load_variables("~/w.npz")


@pytest.mark.parametrize("name, message", [
    ("w.ckpt", (r"eval.inception_weights='.*w.ckpt' is neither a pytorch-fid .pth state dict "
                r"nor its .npz conversion")),
    ("w.pth", (r"eval.inception_weights='.*w.pth' is a PyTorch file and torch is not installed: "
               r"pip install torch, or convert")),
])
def test_inception_weights_the_loader_cannot_read(tmp_path, name, message):
  if name == "w.pth" and importlib.util.find_spec("torch") is not None:
    pytest.skip("torch is installed")
  (tmp_path / name).write_bytes(b"")
  config = configs.get_config("dcgan", "cifar10", "smoke")
  config.eval.inception_weights = str(tmp_path / name)
  with pytest.raises(config_fields.ConfigError, match=message):
    validation.check(config, "train")


def _tensorflow_missing(tmp_path, monkeypatch):
  if importlib.util.find_spec("tensorflow") is not None:
    pytest.skip("TensorFlow is installed")

  def prepare_without_tf(self, **kwargs):
    raise ModuleNotFoundError("Failed to encode example:\nNo module named 'tensorflow'")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", prepare_without_tf)
  data.load("cifar10", "train", data_dir=tmp_path, download=True)


def _empty_npz(tmp_path, monkeypatch):
  (tmp_path / "w.npz").write_bytes(b"")
  inception.load_variables(tmp_path / "w.npz")


def _wrong_npz(tmp_path, monkeypatch):
  np.savez(tmp_path / "w.npz", other=np.zeros(3, np.float32))
  inception.load_variables(tmp_path / "w.npz")


def _pth_without_torch(tmp_path, monkeypatch):
  if importlib.util.find_spec("torch") is not None:
    pytest.skip("torch is installed")
  (tmp_path / "w.pth").write_bytes(b"")
  inception.load_variables(tmp_path / "w.pth")


@pytest.mark.parametrize("cause, kind, message", [
    (_tensorflow_missing, ModuleNotFoundError,
     "MissingDependencyError: tfds needs TensorFlow to prepare 'cifar10'"),
    (_empty_npz, ValueError, ("WeightsFileError: Inception weights '<tmp>/w.npz' are not a "
                              "readable .npz of the FID state dict (EOFError")),
    (_wrong_npz, KeyError, ("MissingWeightsKeyError: Inception weights from <tmp>/w.npz lack key "
                            "'Conv2d_1a_3x3.bn.bias'")),
    (_pth_without_torch, ImportError, ("TorchNotInstalledError: Reading <tmp>/w.pth needs "
                                       "PyTorch (pip install torch)")),
], ids=["tfds-without-tensorflow", "empty-npz", "wrong-keys", "pth-without-torch"])
def test_run_errors_the_checks_cannot_see_are_one_line(cause, kind, message, tmp_path,
                                                       monkeypatch, capsys):
  """Errors of the data and the Inception weights, raised once the run reads them: one line and
  exit 2 from experiment_main.run (their old types still catch them)."""
  with pytest.raises(kind):
    cause(tmp_path, monkeypatch)
  config = configs.get_config("ae", "fashion_mnist", "smoke", "train")
  with pytest.raises(SystemExit) as exit_info:
    experiment_main.run(lambda config, workdir: cause(tmp_path, monkeypatch), "train", config,
                        str(tmp_path / "work"))
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
  assert message.replace("<tmp>", str(tmp_path)) in err, err


@pytest.mark.parametrize("binary", BINARIES)
def test_sections_of_other_binaries_are_ignored(binary):
  config = _with(configs.get_config("vae", "fashion_mnist", "smoke"), early_bird__window=0,
                 transfer__direction="nope", lottery__rate=5.0, tickets__seeds=())
  others = set().union(*configs.SECTIONS.values()) - set(configs.SECTIONS[binary])
  for name in configs.SECTIONS[binary]:
    config[name] = configs.get_config("vae", "fashion_mnist", "smoke")[name]
  assert others  # every binary leaves some section unread
  validation.check(config, binary)


def test_unknown_binary():
  with pytest.raises(ValueError, match="unknown binary 'eval'"):
    validation.check(configs.get_config(), "eval")


@pytest.mark.parametrize("spec, steps", [("500it", 500), ("2ep", 20), (" 3 ep ", 30), (7, 7),
                                         ("0", 0)])
def test_parse_steps(spec, steps):
  assert config_fields.parse_steps(spec, steps_per_epoch=10) == steps


@pytest.mark.parametrize("spec", ["", "-1it", "2 epochs", "1.5ep", 1.5, None, True])
def test_parse_steps_refuses(spec):
  with pytest.raises(config_fields.ConfigError, match="lottery.rewind_step"):
    config_fields.parse_steps(spec, steps_per_epoch=10)


def test_rewind_step_counts_epochs_of_the_limited_data():
  config = configs.get_config("ae", "fashion_mnist", "smoke")   # limit 512, batch 16
  config.train.steps = 100
  config.lottery.rewind_step = "2ep"
  assert config_fields.rewind_step(config) == 64
  assert config_fields.rewind_step(config, num_train=160) == 20
  config.data.limit = 0
  with pytest.raises(config_fields.ConfigError, match="is step 7500"):
    config_fields.rewind_step(config)


def test_part_sparsity():
  eb = configs.get_config("dcgan", "fashion_mnist", "smoke").early_bird
  parts = ("generator", "discriminator")
  assert config_fields.part_sparsity(eb, parts) == 0.7
  eb.part_sparsity = " generator=0.6 "
  assert config_fields.part_sparsity(eb, parts) == {"generator": 0.6, "discriminator": 0.7}


def test_branch_levels():
  lottery = configs.get_config("ae", "fashion_mnist", "smoke").lottery
  assert config_fields.branch_levels(lottery) == {}
  lottery.update(levels=20, branch_levels=" snip, grasp=20,5,10,15 ; synflow=7 ")
  assert config_fields.branch_levels(lottery) == {"snip": (5, 10, 15, 20), "grasp": (5, 10, 15, 20),
                                               "synflow": (7,)}


def test_for_binary_keeps_its_sections_only():
  full = configs.get_config("vae", "fashion_mnist", "smoke")
  full.lock()
  for binary, own in configs.SECTIONS.items():
    config = configs.for_binary(full, binary)
    assert set(config.keys()) == set(configs.COMMON + own)
    assert config.to_dict() == {k: full.to_dict()[k] for k in configs.COMMON + own}
    assert not config.is_locked
    config.train.steps = 99            # a copy: the full config is unchanged
    assert full.train.steps == 6
    assert configs.get_config("vae", "fashion_mnist", "smoke", binary).to_dict() == \
        configs.for_binary(full, binary).to_dict()
  with pytest.raises(ValueError, match="unknown binary"):
    configs.for_binary(full, "report")
