"""DCGAN (Radford et al. 2016), the paper's GAN: :mod:`lth_jax.models.dcgan` trained by the GAN
builder (:mod:`lth_jax.families.gan`)."""

from __future__ import annotations

from lth_jax import families
from lth_jax.families import gan
from lth_jax.models import dcgan


# The DCGAN's ticket as the β-VAE's: generator -> decoder, discriminator body -> encoder body
# (also the WGAN's, whose networks are the DCGAN's).
TO_VAE = families.Transfer("vae", {"generator": dcgan.GAN_TO_VAE["generator"]},
                           {"discriminator/body": dcgan.GAN_TO_VAE["discriminator/body"]})


def build(s: families.Settings):
  widths = s.widths or {}
  generator = dcgan.Generator(width=s.width, channels=s.channels, image_size=s.image_size,
                              z_dim=s.z_dim, widths=widths.get("generator"))
  discriminator = dcgan.Discriminator(width=s.width, channels=s.channels,
                                      image_size=s.image_size,
                                      widths=widths.get("discriminator"))
  return gan.build("dcgan", generator, discriminator, s, channel_groups=dcgan.channel_groups)


SPEC = families.register(families.Spec(
    name="dcgan", kind="gan", parts=gan.PARTS, build=build, primary_metric="fid",
    config={"model.z_dim": 100, "train.steps": 5000,
            "train.optimizer.lr": 2e-4, "train.optimizer.b1": 0.5,
            # The paper keeps the generator's first layer and the discriminator's last dense.
            "prune.exclude": ("generator/convt0", "discriminator/head")},
    presets={"paper": {"train.batch_size": 64, "lottery.rewind_step": "10it"}},
    transfers={"gan_to_vae": TO_VAE},
    reproduction=families.Reproduction(
        winning=83.2, levels={"smoke": 1, "cpu": 10, "gpu": 10},
        overrides={"cpu": {"model.width": 16, "train.steps": 4000}},
        claims=(1, 2, 3, 4, 5, 6, 7))))
