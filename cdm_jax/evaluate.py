"""`python -m cdm_jax.evaluate`: the evaluation command's documented name (`cdm-evaluate`,
`cdm_jax.cli.evaluate`)."""

from cdm_jax.cli.evaluate import main

if __name__ == "__main__":
  main()
