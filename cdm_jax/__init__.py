"""cdm_jax: continuous diffusion language models in JAX/Flax."""

__version__ = "0.1.0"


def load(workdir: str, **kwargs):
  """Loads a trained workdir and returns a `cdm_jax.sample.Generator`."""
  from cdm_jax import sample  # imported lazily: keeps `import cdm_jax` light
  return sample.load(workdir, **kwargs)
