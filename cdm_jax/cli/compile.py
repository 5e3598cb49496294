"""`cdm-compile --config=configs/X.py --topology=v5e-64 [--config.a.b=v]`: compiles every function
a run of the config would use for that TPU slice, on this host through libtpu (no chip needed),
and reports per chip its memory against the chip's HBM, FLOPs, collectives and a roofline bound
(also `python -m cdm_jax.cli.compile`; `cdm_jax.evaluation.pod_compile.compile_run` in Python).
A function that does not fit is one `error:` line (exit 2); `--find_batch` bisects the largest
global batch whose train step fits."""

import json
import logging as pylogging

from absl import app, flags, logging
from ml_collections import config_flags

from cdm_jax.cli import common
from cdm_jax.evaluation import batch_search, pod_compile
from cdm_jax.runtime import fs


def _define_flags():
  config_flags.DEFINE_config_file("config", None, "Path to a config file (get_config()).",
                                  lock_config=True)
  flags.DEFINE_string("topology", None, "The TPU slice as rented: v4-8, v5e-16, v5e-64, v5p-128, "
                      "v6e-8, ... (2-core v4/v5p names count cores), or the compiler's v5e:8x8.")
  flags.DEFINE_list("functions", list(pod_compile.FUNCTIONS), "Which functions to compile.")
  flags.DEFINE_float("fit_fraction", pod_compile.FIT_FRACTION, "Share of a chip's HBM a function "
                     "may use (with the train state resident, for evaluation and sampling).")
  flags.DEFINE_bool("find_batch", False, "Bisect the largest global batch whose train step fits.")
  flags.DEFINE_integer("max_batch", 1 << 16, "--find_batch: the largest global batch tried.")
  flags.DEFINE_bool("json", False, "Print the whole report as JSON instead of a table.")
  flags.DEFINE_string("output", None, "Also write the JSON report to this file.")
  flags.mark_flags_as_required(["config", "topology"])


def _run(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.ERROR)  # libtpu and XLA are chatty
  pylogging.getLogger("cdm_jax").setLevel(pylogging.WARNING)
  values = flags.FLAGS
  try:
    config = values.config
    config.get("seed")
  except OSError as err:
    raise ValueError(f"--config could not be loaded: {str(err).splitlines()[-1].strip()}") from None
  unknown = set(values.functions) - set(pod_compile.FUNCTIONS)
  if unknown:
    raise ValueError(f"Unknown --functions {sorted(unknown)}; choose from "
                     f"{', '.join(pod_compile.FUNCTIONS)}.")
  if values.find_batch:
    result = batch_search.find_batch(config, values.topology, upper=values.max_batch,
                                    fraction=values.fit_fraction)
    print(json.dumps(result))
    return
  result = pod_compile.jsonable(pod_compile.compile_run(config, values.topology,
                                                        tuple(values.functions)))
  if values.output:
    fs.write_atomic(fs.path(values.output), json.dumps(result, indent=1))
  pod_compile.check_fit(result, values.fit_fraction)
  if values.json:
    print(json.dumps(result))
  else:
    print(pod_compile.SUMMARY_HEADER)
    print("\n".join(pod_compile.summary_rows(result)))


def main(argv=None):
  _define_flags()
  common.run_main(_run, argv)


if __name__ == "__main__":
  main()
