"""cdm_jax: continuous diffusion language models in JAX/Flax.

Layers, bottom to top (each imports only the ones before it): `runtime`, `core`, `models` and
`data`, `sampling`, `training`, `posttrain`, `evaluation`, `cli` (docs/design.md). The pure math
is importable as `from cdm_jax import schedules, diffusion, samplers`; a trained workdir as
`cdm_jax.load(DIR)`.
"""

from cdm_jax.core import diffusion, samplers, schedules

__version__ = "0.2.0"


def tune_malloc() -> bool:
  """Faster XLA:CPU steps: glibc keeps and reuses freed memory. Opt-in for library users (every
  CLI does it); call before the first JAX computation. See `cdm_jax.runtime.allocator`."""
  from cdm_jax.runtime import allocator  # pylint: disable=g-import-not-at-top
  return allocator.tune_malloc()


def load(workdir: str, **kwargs):
  """Loads a trained workdir: a `cdm_jax.sampling.Generator` (see `sampling.generator.load`)."""
  from cdm_jax.sampling import generator  # pylint: disable=g-import-not-at-top  (keeps import light)
  return generator.load(workdir, **kwargs)
