"""The one loop skeleton every training stage runs in (the diffusion model, distillation; any later
stage): restore or initialize, dispatch compiled steps, run the stage's periodic actions, checkpoint,
stop cleanly on SIGTERM, a time limit or a step cap (pooled over processes), and always leave
Orbax's threads stopped and the stage's writers closed, on success or failure.

A stage is any object with:
  spec: LoopSpec
  manager: the Orbax CheckpointManager; batches: an iterator with `get_state()`
  restore_or_init() -> state (with an integer `state.step`)
  dispatch(state, step) -> (state, metrics)    one compiled call from `step`: `spec.steps_per_call` steps
  after_step(state, step, metrics, last) -> state  logging, evaluation, rounds... (may replace it)
  checkpoint_due(step) -> bool                 a checkpoint the stage needs now (e.g. a round end)
  checkpoint_view(state) -> pytree             what a checkpoint holds of the state (what
                                               `restore_or_init` reads back)
  paused() -> context manager                  time kept out of throughput figures
  close()                                      after the loop, on success or failure
"""

import dataclasses
import logging

import jax
import tqdm

from cdm_jax.runtime import checkpointing, distributed, periodic

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoopSpec:
  total_steps: int
  checkpoint_every_steps: int
  steps_per_call: int = 1
  time_limit_minutes: float = 0.0
  stop_at_step: int = 0          # > 0: end this job at that step (a fixed-length job of a run)
  desc: str = "train"


def _stop_now(spec: LoopSpec, step: int, preemption: periodic.Preemption,
              deadline: periodic.Deadline, dispatch: int) -> bool:
  """Whether to stop after `step`. SIGTERM and the time limit reach each process on its own: with
  several processes they are pooled every `distributed.STOP_SYNC_DISPATCHES` dispatches, and all
  stop at the same step."""
  timed_out = deadline.passed()
  if distributed.stop_requested(preemption.requested or timed_out, dispatch):
    if not timed_out:  # SIGTERM here or on another process: an interrupted run, not a planned stop
      periodic.mark_stopped_by_sigterm(step)
    log.warning("Stopping at step %d (%s); rerun the same command to resume.", step,
                "SIGTERM" if preemption.requested else
                f"the time limit of {spec.time_limit_minutes} minutes" if timed_out else
                "another process was asked to stop")
    return True
  return step >= spec.total_steps or bool(spec.stop_at_step and step >= spec.stop_at_step)


def _steps(stage, state):
  """Steps from `state` to the end (or a stop request); (state, last step)."""
  spec = stage.spec
  step = int(jax.device_get(state.step))
  deadline, dispatches = periodic.Deadline(spec.time_limit_minutes), 0
  with periodic.Preemption() as preemption, tqdm.tqdm(
      total=spec.total_steps, initial=step, disable=not distributed.is_primary(),
      dynamic_ncols=True, mininterval=5.0, desc=spec.desc) as bar:
    while step < spec.total_steps:
      state, metrics = stage.dispatch(state, step)
      step += spec.steps_per_call
      dispatches += 1
      bar.update(spec.steps_per_call)
      last = _stop_now(spec, step, preemption, deadline, dispatches)
      state = stage.after_step(state, step, metrics, last)
      due = stage.checkpoint_due(step)
      if periodic.itstime(step, spec.checkpoint_every_steps, last or due):
        with stage.paused():
          checkpointing.save(stage.manager, step, stage.checkpoint_view(state),
                             stage.batches.get_state(), force=last or due)
      if last:
        break
  return state, step


def run(stage) -> tuple[object, int]:
  """Restores or initializes `stage`'s state and steps it to the end; returns (state, last step).
  Pending saves are waited for (a failed one raises `checkpointing.SaveError`); on any error
  Orbax's threads are stopped before it propagates."""
  try:
    state, step = _steps(stage, stage.restore_or_init())
  except BaseException:
    checkpointing.finish(stage.manager, raise_errors=False)
    stage.close()
    raise
  checkpointing.finish(stage.manager)
  stage.close()
  return state, step
