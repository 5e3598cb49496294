"""The one place that talks to Orbax: train state + data-iterator position, keep-last-N, async."""

import pathlib

import jax
import orbax.checkpoint as ocp


def make_manager(workdir: str, max_to_keep: int = 3, async_save: bool = True) -> ocp.CheckpointManager:
  directory = pathlib.Path(workdir).absolute() / "checkpoints"
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(directory, options=options, item_names=("state", "data"))


def save(manager: ocp.CheckpointManager, step: int, state, data_state: dict, force: bool = False):
  """Starts an (async) save of `state` and the data position at `step`."""
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             data=ocp.args.JsonSave(data_state)), force=force)


def restore_latest(manager: ocp.CheckpointManager, abstract_state):
  """(state, data_state, step) from the newest finished checkpoint, or None if there is none.

  `abstract_state` gives the structure, shapes and shardings (e.g. from `jax.eval_shape`).
  Unfinished saves (a `*.orbax-checkpoint-tmp` folder left by a crash) are ignored by Orbax.
  """
  step = manager.latest_step()
  if step is None:
    return None
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
  return restored["state"], restored["data"], step


def restore_subtree(workdir: str, abstract: dict, step: int | None = None):
  """Only the named fields of the saved train state (e.g. {"ema_params": ..., "warp": ...}) at
  `step` (default: the latest), as (dict, step): no optimizer state is read. Raises if there is
  no checkpoint."""
  manager = make_manager(workdir, async_save=False)
  step = manager.latest_step() if step is None else step
  manager.close()
  if step is None:
    raise FileNotFoundError(f"No checkpoint under {workdir}/checkpoints: train first "
                            f"(python -m cdm_jax.main --workdir={workdir} ...).")
  path = pathlib.Path(workdir).absolute() / "checkpoints" / str(step) / "state"
  args = ocp.args.PyTreeRestore(item=abstract, partial_restore=True,
                                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))
  return ocp.PyTreeCheckpointer().restore(path, args=args), step


def abstract_like(tree, sharding):
  """ShapeDtypeStructs of `tree` placed with `sharding` (restore targets)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def save_tree(path: pathlib.Path, tree):
  """Saves one pytree (e.g. the judge's parameters) synchronously to `path`."""
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(pathlib.Path(path).absolute(), tree, force=True)
  checkpointer.wait_until_finished()


def restore_tree(path: pathlib.Path, abstract_tree):
  return ocp.StandardCheckpointer().restore(pathlib.Path(path).absolute(), abstract_tree)
