"""validation.check (every field of every binary, table-driven), its parsers, configs.for_binary."""
import ml_collections
import pytest

from lth_jax import configs, validation

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
  with pytest.raises(validation.ConfigError, match="needs eval.inception_weights"):
    validation.check(config, "train")
  config.eval.inception_weights = str(tmp_path / "missing.npz")
  with pytest.raises(validation.ConfigError, match="eval.inception_weights=.* is not a file"):
    validation.check(config, "train")
  (tmp_path / "missing.npz").write_bytes(b"")
  validation.check(config, "train")


# (binary, family, fields, message): each config is the family's smoke config with ``fields``.
CASES = [
    ("train", "ae", dict(family="wgan"), "family: unknown model family 'wgan'"),
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
    ("train", "ae", dict(loss__kind="wasserstein"), "unknown loss.kind 'wasserstein'"),
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
    ("train", "ae", dict(eval__num_samples=1), "eval.num_samples must be >= 2"),
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
  with pytest.raises(validation.ConfigError, match=message):
    validation.check(config, binary)


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
  assert validation.parse_steps(spec, steps_per_epoch=10) == steps


@pytest.mark.parametrize("spec", ["", "-1it", "2 epochs", "1.5ep", 1.5, None, True])
def test_parse_steps_refuses(spec):
  with pytest.raises(validation.ConfigError, match="lottery.rewind_step"):
    validation.parse_steps(spec, steps_per_epoch=10)


def test_rewind_step_counts_epochs_of_the_limited_data():
  config = configs.get_config("ae", "fashion_mnist", "smoke")   # limit 512, batch 16
  config.train.steps = 100
  config.lottery.rewind_step = "2ep"
  assert validation.rewind_step(config) == 64
  assert validation.rewind_step(config, num_train=160) == 20
  config.data.limit = 0
  with pytest.raises(validation.ConfigError, match="is step 7500"):
    validation.rewind_step(config)


def test_part_sparsity():
  eb = configs.get_config("dcgan", "fashion_mnist", "smoke").early_bird
  parts = ("generator", "discriminator")
  assert validation.part_sparsity(eb, parts) == 0.7
  eb.part_sparsity = " generator=0.6 "
  assert validation.part_sparsity(eb, parts) == {"generator": 0.6, "discriminator": 0.7}


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
