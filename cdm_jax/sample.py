"""`python -m cdm_jax.sample`: the sampling command's documented name (`cdm-generate`,
`cdm_jax.cli.generate`)."""

from cdm_jax.cli.generate import main

if __name__ == "__main__":
  main()
