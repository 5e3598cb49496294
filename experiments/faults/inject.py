"""Runs `python -m cdm_jax.cli.train ARGS` with one fault injected on purpose, for experiments/faults/run.py.

python experiments/faults/inject.py full_disk:STEP -- ARGS   # every write of step STEP's save: ENOSPC
python experiments/faults/inject.py nan:STEP -- ARGS         # a NaN parameter before step STEP

The full disk is simulated at the file layer (Python's `open` raises ENOSPC for the files of that
checkpoint; Orbax writes its metadata and commit markers through it), since a tmpfs or loop device
needs root here.
"""

import builtins
import errno
import runpy
import sys


def full_disk(step: int):
  real_open = builtins.open
  marker = f"checkpoints/{step}.orbax-checkpoint-tmp"

  def open_on_a_full_disk(file, mode="r", *args, **kwargs):
    if any(m in mode for m in "wax") and marker in str(file):
      raise OSError(errno.ENOSPC, "No space left on device", str(file))
    return real_open(file, mode, *args, **kwargs)
  builtins.open = open_on_a_full_disk


def nan(step: int):
  """Poisons the train state on the host just before optimizer step `step` + 1 (the step training
  reports as "step {step}"): one parameter becomes NaN. The compiled step is left as it is, so the
  steps before it compute exactly what an uninterrupted run computes."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from cdm_jax.training import steps  # pylint: disable=g-import-not-at-top
  make_train_step = steps.make_train_step

  def make_poisoned(*args, **kwargs):
    train_step = make_train_step(*args, **kwargs)

    def poisoned(state, *batch):
      if int(jax.device_get(state.step)) == step:
        leaves, treedef = jax.tree.flatten(state.params)
        leaves[0] = jnp.full_like(leaves[0], jnp.nan)
        state = state.replace(params=jax.tree.unflatten(treedef, leaves))
      return train_step(state, *batch)
    return poisoned
  steps.make_train_step = make_poisoned


def main():
  fault, rest = sys.argv[1], sys.argv[2:]
  if rest[:1] == ["--"]:
    rest = rest[1:]
  kind, step = fault.split(":")
  {"full_disk": full_disk, "nan": nan}[kind](int(step))
  sys.argv = ["cdm-train", *rest]
  runpy.run_module("cdm_jax.cli.train", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main()
