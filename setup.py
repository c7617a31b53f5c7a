"""Installs lth_jax: lottery tickets in deep generative models, in JAX/Flax."""
import setuptools

CORE = [
    "jax>=0.10",
    "flax>=0.12",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12",
    "tensorflow-datasets>=4.9.10",
    # tfds 4.9.10 fails at the first dataset build without it (see BUILD_NOTES.md).
    "importlib_resources",
    "array_record>=0.8",
    "chex>=0.1.90",
    "absl-py>=2.0",
    "ml_collections>=1.0",
    "numpy>=2.0",
    "scipy>=1.13",
    "matplotlib>=3.8",
    "tensorboardX>=2.6",
    "pillow>=10",
    "tqdm>=4.66",                     # progress bars (lth_jax.progress)
    "filelock>=3.12",                 # reproduction workers share a workdir (job locks)
]

setuptools.setup(
    name="lth_jax",
    version="0.1.0",
    description="Winning lottery tickets in deep generative models (AE, VAE, GAN) with JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["lth_jax", "lth_jax.*"]),
    install_requires=CORE,
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100", "scikit-learn>=1.4",
                 "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29"],
        "bench": ["torch==2.13.0"],
        "notebook": ["jupyter", "ipywidgets"],
    },
)
