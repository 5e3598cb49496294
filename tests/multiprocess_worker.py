"""One process of a run of tests/test_multiprocess.py: python multiprocess_worker.py SPEC.json ID.

SPEC (JSON): processes, devices (per process), port, workdir, config (a config file) and overrides
(its dotted overrides: conftest's `trained_overrides`, the shared `trained` workdir's config with
this run's train block), out (folder for this process's results), sample (bool: also load the
workdir with `cdm_jax.load` and sample). Writes out/result_ID.json (last metrics, samples, the
files this process opened for writing outside checkpoints/) and out/params_ID.npz.

The test starts it with its own XLA_FLAGS: SPEC["devices"] CPU devices, no LLVM optimisation (as in
conftest), and collectives that give up after 150 s (a collective that waits far longer than a step
takes says so in the log, then ends the process; the test then reruns once: a hang in the
runtime, not in the library).
"""

import builtins
import io
import json
import os
import pathlib
import sys

import jax

SPEC = json.loads(pathlib.Path(sys.argv[1]).read_text())
PROCESS_ID = int(sys.argv[2])
jax.config.update("jax_num_cpu_devices", SPEC["devices"])


def _record_writes(workdir: pathlib.Path, written: list):
  """Wraps open() to note every file under `workdir` (outside checkpoints/) opened for writing."""
  original = builtins.open

  def recording_open(file, mode="r", *args, **kwargs):
    if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
      path = pathlib.Path(file).absolute()
      if workdir in path.parents and "checkpoints" not in path.relative_to(workdir).parts:
        written.append(str(path.relative_to(workdir)))
    return original(file, mode, *args, **kwargs)

  builtins.open = io.open = recording_open


def main():
  from cdm_jax.runtime import config_files, distributed  # pylint: disable=g-import-not-at-top
  from cdm_jax.training import train
  import cdm_jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  if SPEC["processes"] > 1:
    distributed.initialize(f"127.0.0.1:{SPEC['port']}", SPEC["processes"], PROCESS_ID,
                           timeout_s=120)
  workdir = pathlib.Path(SPEC["workdir"]).absolute()
  written = []
  _record_writes(workdir, written)
  config = config_files.load(SPEC["config"], SPEC["overrides"])
  metrics = train.train_and_evaluate(config, str(workdir))
  result = {"metrics": metrics, "written": written, "process_count": jax.process_count()}
  if SPEC.get("sample"):
    generator = cdm_jax.load(str(workdir))
    result["samples"] = generator.sample(6, seed=3)
    params = distributed.to_host(generator.params)
    flat = {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    np.savez(pathlib.Path(SPEC["out"]) / f"params_{PROCESS_ID}.npz", **flat)
  (pathlib.Path(SPEC["out"]) / f"result_{PROCESS_ID}.json").write_text(json.dumps(result))


if __name__ == "__main__":
  main()
