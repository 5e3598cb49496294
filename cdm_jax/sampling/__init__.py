"""Generation from a trained workdir: the compiled sharded sample function (`make_sample_fn`), the
`Generator` with its explicit sampling API, `load`, and the on-disk formats of what post-training
writes beside a model (`artifacts`). Imports no training or post-training module."""

from cdm_jax.sampling.generator import Generator, load
from cdm_jax.sampling.sample_fn import make_denoise_fn, make_sample_fn

__all__ = ["Generator", "load", "make_denoise_fn", "make_sample_fn"]
