"""`python -m cdm_jax.sample` (the CLI's earlier name): the same as `python -m cdm_jax.generate`."""

from cdm_jax.generate import Generator, load, main  # pylint: disable=unused-import

if __name__ == "__main__":
  main()
