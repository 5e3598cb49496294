"""`cdm-train --config=configs/X.py --workdir=DIR [--config.a.b=v]`: trains (or resumes) a
diffusion LM (also `python -m cdm_jax.cli.train`)."""

import logging as pylogging

from absl import app, flags, logging
from ml_collections import config_flags

from cdm_jax.cli import common
from cdm_jax.training import train


def _define_flags():
  config_flags.DEFINE_config_file("config", None, "Path to a config file (get_config()).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Where checkpoints, tokenizer, metrics and samples live; "
                      "rerunning with the same workdir resumes.")
  common.define_multihost_flags(flags)
  flags.mark_flags_as_required(["config", "workdir"])


def _run(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Orbax and JAX are chatty at INFO
  pylogging.getLogger("cdm_jax").setLevel(pylogging.INFO)
  values = flags.FLAGS
  try:
    config = values.config
    config.get("seed")  # a config file that failed to load raises only when first read
  except OSError as err:
    raise ValueError(f"--config could not be loaded: {str(err).splitlines()[-1].strip()}") from None
  common.join_if_asked(values)
  train.train_and_evaluate(config, values.workdir)


def main(argv=None):
  _define_flags()
  common.run_main(_run, argv)


if __name__ == "__main__":
  main()
