"""`python -m cdm_jax.main`: the training command's documented name (`cdm-train`,
`cdm_jax.cli.train`)."""

from cdm_jax.cli.train import main

if __name__ == "__main__":
  main()
