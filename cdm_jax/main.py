"""Entry point: python -m cdm_jax.main --config=configs/X.py --workdir=DIR [--config.a.b=v]."""

import logging as pylogging

from absl import app, flags, logging
from ml_collections import config_flags

from cdm_jax import cli, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (get_config()).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, tokenizer, metrics and samples live; "
                    "rerunning with the same workdir resumes.")
cli.define_multihost_flags(flags)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Orbax and JAX are chatty at INFO
  pylogging.getLogger("cdm_jax").setLevel(pylogging.INFO)
  cli.join_if_asked(FLAGS)
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(cli.user_errors_exit(main))
