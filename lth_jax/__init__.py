"""lth_jax: lottery tickets in deep generative models, in JAX/Flax.

Import modules, not names: ``from lth_jax import masks`` then ``masks.apply(params, m)``.
"""

__version__ = "0.1.0"
