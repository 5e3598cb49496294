"""The one place that talks to Orbax: train state + data-iterator position, keep-last-N, async."""

import logging
import sys
import threading
import time

import jax
import orbax.checkpoint as ocp
from etils import epath

from cdm_jax.runtime import distributed
from cdm_jax.runtime import fs

log = logging.getLogger(__name__)
QUARANTINE = "checkpoints_unreadable"  # beside checkpoints/: where unreadable steps are moved


def make_manager(workdir: str, max_to_keep: int = 3, async_save: bool = True,
                 keep_steps=()) -> ocp.CheckpointManager:
  """The manager of `workdir/checkpoints`: the newest `max_to_keep` steps are kept, and every step
  in `keep_steps` (branch points) as well."""
  directory = fs.path(workdir) / "checkpoints"
  if keep_steps:
    policies = ocp.checkpoint_managers
    keep = {"preservation_policy": policies.AnyPreservationPolicy(
        [policies.LatestN(max_to_keep), policies.CustomSteps(list(keep_steps))])}
  else:
    keep = {"max_to_keep": max_to_keep}
  options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=async_save, **keep)
  return ocp.CheckpointManager(directory, options=options, item_names=("state", "data"))


class UnreadableCheckpointError(RuntimeError, ValueError):
  """No checkpoint of a workdir can be read (a RuntimeError as before; a ValueError, so the CLIs
  report it as a bad input: one line, exit status 2)."""


class SaveError(OSError):
  """A checkpoint could not be written (e.g. a full disk); the steps already committed are intact."""


def _save_failed(manager: ocp.CheckpointManager, err: Exception) -> SaveError:
  newest = manager.latest_step()
  resume = (f"rerun the same command to resume from step {newest}" if newest is not None
            else "rerun the same command (no checkpoint was committed yet)")
  return SaveError(f"Writing a checkpoint to {manager.directory} failed: {err}. The checkpoints "
                   f"committed before it are intact; free space or fix the path, then {resume}.")


def save(manager: ocp.CheckpointManager, step: int, state, data_state: dict, force: bool = False):
  """Starts an (async) save of `state` and the data position at `step`. A failure of this save or
  of the previous (async) one raises `SaveError`."""
  try:
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               data=ocp.args.JsonSave(data_state)), force=force)
  except OSError as err:
    _join_orbax_threads()
    raise _save_failed(manager, err) from err


def _join_orbax_threads(timeout: float = 60.0):
  """After a failed save, Orbax's other commit threads of it are still running; left alone, they
  fail again during interpreter shutdown with screens of unrelated tracebacks."""
  deadline = time.monotonic() + timeout
  for thread in threading.enumerate():
    if type(thread).__module__.startswith("orbax") and thread is not threading.current_thread():
      try:  # Orbax's signalling threads re-raise their own error from join(); it is reported already
        thread.join(max(0.0, deadline - time.monotonic()))
      except Exception:  # pylint: disable=broad-except
        pass


def finish(manager: ocp.CheckpointManager, *, raise_errors: bool = True):
  """Waits for the pending save and stops Orbax's threads. A failed save raises `SaveError` (or,
  with `raise_errors=False`, as when another error is already on its way out, is only logged)."""
  try:
    manager.wait_until_finished()
  except OSError as err:
    if raise_errors:
      raise _save_failed(manager, err) from err
    log.error("The pending checkpoint save failed as well: %s", err)
  finally:
    try:
      manager.close()
    except Exception as err:  # pylint: disable=broad-except  # the save's error was reported above
      log.warning("Closing the checkpoint manager: %s", err)
    if not raise_errors or sys.exc_info()[0] is not None:  # after a failure: wait for its threads
      _join_orbax_threads()


def restore_latest(manager: ocp.CheckpointManager, abstract_state):
  """(state, data_state, step) from the newest readable checkpoint, or None if there is none.

  `abstract_state` gives the structure, shapes and shardings (e.g. from `jax.eval_shape`), or is a
  function of the step that gives them (when a run's format changed between its checkpoints).
  Unfinished saves (a `*.orbax-checkpoint-tmp` folder left by a crash) are ignored by Orbax. A
  newer step that cannot be read (truncated, missing metadata, garbage bytes) is logged, moved
  aside to `checkpoints_unreadable/` (never deleted) once an older step restores, and the older
  one is used; when no step is readable, nothing is moved and the first error is raised.
  """
  target = abstract_state if callable(abstract_state) else lambda unused_step: abstract_state
  args = lambda s: ocp.args.Composite(state=ocp.args.StandardRestore(target(s)),
                                      data=ocp.args.JsonRestore())
  restored, step, unreadable = _newest_readable(
      sorted(manager.all_steps(), reverse=True), lambda s: manager.restore(s, args=args(s)),
      epath.Path(manager.directory))
  if restored is None:
    return None
  if unreadable:
    distributed.on_primary(lambda: _quarantine(epath.Path(manager.directory), unreadable),
                           "moving unreadable checkpoints aside")
    manager.reload()
  return restored["state"], restored["data"], step


def _newest_readable(steps: list[int], restore, directory: epath.Path):
  """(restored, step, [unreadable newer steps]) of the first of `steps` that `restore` reads;
  (None, None, []) without steps; raises when none is readable."""
  failures = []
  for step in steps:
    try:
      return restore(step), step, [s for s, _ in failures]
    except Exception as err:  # pylint: disable=broad-except  (Orbax raises many kinds)
      log.warning("Checkpoint %s/%d is unreadable (%s: %s); trying an older one.", directory,
                  step, type(err).__name__, str(err).splitlines()[0][:200] if str(err) else "")
      failures.append((step, err))
  if failures:
    step, err = failures[0]
    raise UnreadableCheckpointError(
        f"No readable checkpoint in {directory} (tried steps {[s for s, _ in failures]}; newest: "
        f"{type(err).__name__}: {str(err)[:300]}). If the model config changed, use the saved "
        "one (config.json) or a new workdir.") from err
  return None, None, []


def _quarantine(directory: epath.Path, steps: list[int]):
  """Moves unreadable step folders to ../checkpoints_unreadable/<step>-<time> (kept, not deleted)."""
  target = directory.parent / QUARANTINE
  target.mkdir(exist_ok=True)
  for step in steps:
    destination = target / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    (directory / str(step)).rename(destination)
    log.warning("Moved the unreadable checkpoint %d to %s.", step, destination)


def saved_steps(workdir: str) -> list[int]:
  """The steps of `workdir`'s checkpoints, oldest first (none read)."""
  manager = make_manager(workdir, async_save=False)
  steps = sorted(manager.all_steps())
  manager.close()
  return steps


def has_saved(directory, step: int, keys: tuple[str, ...]) -> bool:
  """Whether the train state saved at `step` under the checkpoint folder `directory` holds the
  subtree at `keys` (e.g. ("params", "params", "embedder")); its metadata is read, no array."""
  tree = ocp.PyTreeCheckpointer().metadata(fs.path(directory) / str(step) / "state").item_metadata
  tree = tree.tree if hasattr(tree, "tree") else tree
  for key in keys:
    if not isinstance(tree, dict) or key not in tree:
      return False
    tree = tree[key]
  return True


def restore_subtree(workdir: str, abstract: dict, step: int | None = None):
  """Only the named fields of the saved train state (e.g. {"ema_params": ..., "warp": ...}) at
  `step` (default: the newest readable one; unreadable newer ones are skipped with a warning but
  left in place), as (dict, step): no optimizer state is read. Raises if there is no checkpoint."""
  steps = saved_steps(workdir)[::-1]
  if not steps:
    raise FileNotFoundError(f"No checkpoint under {workdir}/checkpoints: train first "
                            f"(cdm-train --workdir={workdir} ...).")
  if step is not None and step not in steps:
    raise FileNotFoundError(f"No checkpoint of step {step} in {workdir}/checkpoints; there are "
                            f"{sorted(steps)}.")
  directory = fs.path(workdir) / "checkpoints"
  args = ocp.args.PyTreeRestore(item=abstract, partial_restore=True,
                                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))
  restore = lambda s: ocp.PyTreeCheckpointer().restore(directory / str(s) / "state", args=args)
  restored, step, _ = _newest_readable([step] if step is not None else steps, restore, directory)
  return restored, step


def abstract_like(tree, sharding):
  """ShapeDtypeStructs of `tree` placed with `sharding` (restore targets)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def save_tree(path, tree):
  """Saves one pytree (e.g. the judge's parameters) synchronously to `path`."""
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(fs.path(path), tree, force=True)
  checkpointer.wait_until_finished()


def restore_tree(path, abstract_tree):
  return ocp.StandardCheckpointer().restore(fs.path(path), abstract_tree)
