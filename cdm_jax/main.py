"""Entry point: python -m cdm_jax.main --config=configs/X.py --workdir=DIR [--config.a.b=v]."""

import logging as pylogging

from absl import app, flags, logging
from ml_collections import config_flags

from cdm_jax import cli, distributed, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (get_config()).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, tokenizer, metrics and samples live; "
                    "rerunning with the same workdir resumes.")
flags.DEFINE_bool("multihost", False, "Join a multi-process run first (TPU VM pods, several GPU "
                  "hosts): on a pod JAX finds the other processes itself; elsewhere give the three "
                  "flags below (or CDM_JAX_COORDINATOR / CDM_JAX_NUM_PROCESSES / "
                  "CDM_JAX_PROCESS_ID). Each process then reads its own share of every batch.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (implies --multihost).")
flags.DEFINE_integer("num_processes", None, "Processes in the run (implies --multihost).")
flags.DEFINE_integer("process_id", None, "This process's id, 0 ... num_processes - 1.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Orbax and JAX are chatty at INFO
  pylogging.getLogger("cdm_jax").setLevel(pylogging.INFO)
  explicit = (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  if FLAGS.multihost or any(x is not None for x in explicit):
    distributed.initialize(*explicit)
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(cli.user_errors_exit(main))
