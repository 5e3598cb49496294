"""cdm_jax: continuous diffusion language models in JAX/Flax."""

__version__ = "0.1.0"


def tune_malloc() -> bool:
  """Faster XLA:CPU steps: glibc keeps and reuses freed memory. Call before the first JAX
  computation; see `cdm_jax.host`."""
  from cdm_jax import host
  return host.tune_malloc()


def load(workdir: str, **kwargs):
  """Loads a trained workdir and returns a `cdm_jax.generate.Generator` (see `generate.load`)."""
  from cdm_jax import generate  # imported lazily: keeps `import cdm_jax` light
  return generate.load(workdir, **kwargs)
