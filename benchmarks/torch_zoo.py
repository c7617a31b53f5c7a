"""The zoo's GANs in PyTorch (NCHW), for ``train_step.py --family``: SNGAN and ResNet-DCGAN.

Same layers, shapes and losses as :mod:`lth_jax.models.sngan` and :mod:`lth_jax.models.resnet`
(SNGAN's spectral norm: ``torch.nn.utils.parametrizations.spectral_norm``, one power iteration
per call, on the raw weight, which is re-masked after each step). The weights are PyTorch's own
initialisation and the mask a random one of lth_jax's overall density (an eager step costs the
same whatever the values): :func:`masked_pairs`.
"""

from __future__ import annotations

from lth_jax.models import dcgan, resnet, sngan


def sngan_models(torch, width: int, channels: int, image_size: int, z_dim: int):
  """SNGAN's generator and spectrally normalised discriminator."""
  nn = torch.nn
  sn = nn.utils.parametrizations.spectral_norm
  g_hidden = sngan.generator_widths(width, image_size)
  d_hidden = sngan.discriminator_widths(width, image_size)

  class Generator(nn.Module):
    def __init__(self):
      super().__init__()
      cins = (z_dim,) + g_hidden[:-1]
      self.convt = nn.ModuleList(
          nn.ConvTranspose2d(ci, co, 4, 1 if i == 0 else 2, 0 if i == 0 else 1, bias=False)
          for i, (ci, co) in enumerate(zip(cins, g_hidden)))
      self.bn = nn.ModuleList(nn.BatchNorm2d(c, eps=dcgan.BN_EPSILON) for c in g_hidden)
      self.conv_out = nn.Conv2d(g_hidden[-1], channels, 3, 1, 1)

    def forward(self, z):
      x = z.view(z.shape[0], z_dim, 1, 1)
      for conv, bn in zip(self.convt, self.bn):
        x = torch.relu(bn(conv(x)))
      return torch.tanh(self.conv_out(x))

  class Discriminator(nn.Module):
    def __init__(self):
      super().__init__()
      cins = (channels,) + d_hidden[:-1]
      self.conv = nn.ModuleList(
          sn(nn.Conv2d(ci, co, 3 if i % 2 == 0 else 4, 1 if i % 2 == 0 else 2, 1))
          for i, (ci, co) in enumerate(zip(cins, d_hidden)))
      self.head = sn(nn.Conv2d(d_hidden[-1], 1, 4, 1, 0))

    def forward(self, x):
      for conv in self.conv:
        x = nn.functional.leaky_relu(conv(x), sngan.LEAKY_SLOPE)
      return self.head(x).view(-1)

  return Generator(), Discriminator()


def resnet_models(torch, width: int, channels: int, image_size: int, z_dim: int):
  """ResNet-DCGAN's generator (up blocks) and discriminator (down blocks, sum pooling)."""
  nn, F = torch.nn, torch.nn.functional
  up = lambda x: F.interpolate(x, scale_factor=2, mode="nearest")
  n = resnet.num_blocks(image_size)

  class UpBlock(nn.Module):
    def __init__(self):
      super().__init__()
      self.bn1 = nn.BatchNorm2d(width, eps=resnet.BN_EPSILON)
      self.conv1 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(width, eps=resnet.BN_EPSILON)
      self.conv2 = nn.Conv2d(width, width, 3, 1, 1)
      self.shortcut = nn.Conv2d(width, width, 1)

    def forward(self, x):
      h = self.conv1(up(torch.relu(self.bn1(x))))
      return self.conv2(torch.relu(self.bn2(h))) + self.shortcut(up(x))

  class DownBlock(nn.Module):
    def __init__(self, cin, *, down, first):
      super().__init__()
      self.down, self.first = down, first
      self.conv1 = nn.Conv2d(cin, width, 3, 1, 1)
      self.conv2 = nn.Conv2d(width, width, 3, 1, 1)
      self.shortcut = nn.Conv2d(cin, width, 1) if down or cin != width else None

    def forward(self, x):
      h = self.conv2(torch.relu(self.conv1(x if self.first else torch.relu(x))))
      if self.down:
        h = F.avg_pool2d(h, 2)
      if self.first:
        return h + self.shortcut(F.avg_pool2d(x, 2))
      if self.shortcut is not None:
        s = self.shortcut(x)
        return h + (F.avg_pool2d(s, 2) if self.down else s)
      return h + x

  class Generator(nn.Module):
    def __init__(self):
      super().__init__()
      self.dense = nn.Linear(z_dim, 4 * 4 * width)
      self.blocks = nn.ModuleList(UpBlock() for _ in range(n))
      self.bn = nn.BatchNorm2d(width, eps=resnet.BN_EPSILON)
      self.conv_out = nn.Conv2d(width, channels, 3, 1, 1)

    def forward(self, z):
      x = self.dense(z).view(z.shape[0], width, 4, 4)
      for block in self.blocks:
        x = block(x)
      return torch.tanh(self.conv_out(torch.relu(self.bn(x))))

  class Discriminator(nn.Module):
    def __init__(self):
      super().__init__()
      self.blocks = nn.ModuleList(
          [DownBlock(channels, down=True, first=True)]
          + [DownBlock(width, down=i < n - 1, first=False) for i in range(1, n + 1)])
      self.head = nn.Linear(width, 1)

    def forward(self, x):
      for block in self.blocks:
        x = block(x)
      return self.head(torch.relu(x).sum(dim=(2, 3))).view(-1)

  return Generator(), Discriminator()


MODELS = {"sngan": sngan_models, "resnet_dcgan": resnet_models}


def masked_pairs(torch, gen, disc, density: float):
  """``[(param, float mask)]``: a random mask of ``density`` for every weight (more than one
  axis) of ``gen`` and ``disc`` but the generator's first and the discriminator's last (the
  paper's exclusions, as lth_jax's)."""
  g = [p for p in gen.parameters() if p.ndim > 1][1:]
  d = [p for p in disc.parameters() if p.ndim > 1][:-1]
  return [(p, (torch.rand(p.shape) < density).float()) for p in g + d]
