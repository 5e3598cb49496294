"""One small fit loop for the auxiliary models (the AR model, the read-out decoder, the noisy-latent
classifiers): jit-compiled value-and-grad steps over host batches, an optional time limit, and a
progress bar that shows the budget that actually binds (steps, or seconds under a time limit)."""

import logging
from typing import Any, Callable

import jax
import optax
import tqdm

from cdm_jax.runtime import periodic

log = logging.getLogger(__name__)

# loss_fn(params, frozen, batch, key) -> (scalar loss, dict of scalar metrics)
LossFn = Callable[[Any, Any, Any, jax.Array], tuple[jax.Array, dict]]


def make_fit_step(loss_fn: LossFn, tx: optax.GradientTransformation):
  """The compiled `(params, opt_state, frozen, batch, key) -> (params, opt_state, metrics)`;
  `frozen` (e.g. a frozen model's parameters) is an argument, not a baked-in constant."""

  @jax.jit
  def step(params, opt_state, frozen, batch, key):
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, frozen, batch, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, {"loss": loss, **aux}

  return step


class _Progress:
  """A tqdm bar over steps, or over seconds when a time limit may stop the fit first."""

  def __init__(self, num_steps: int, deadline: periodic.Deadline, desc: str):
    self.deadline = deadline
    timed = deadline.seconds is not None
    self.bar = tqdm.tqdm(total=round(deadline.seconds) if timed else num_steps, desc=desc,
                         unit="s" if timed else "step", mininterval=5.0, dynamic_ncols=True)
    self.timed = timed

  def update(self, metrics: dict | None):
    if self.timed:  # update() redraws at most every `mininterval` seconds
      seconds = min(self.bar.total, round(self.deadline.elapsed_seconds()))
      if seconds > self.bar.n:
        self.bar.update(seconds - self.bar.n)
    else:
      self.bar.update(1)
    if metrics:
      self.bar.set_postfix({k: f"{v:.4f}" for k, v in metrics.items()}, refresh=False)

  def close(self):
    self.bar.close()


def fit(loss_fn: LossFn, params, tx: optax.GradientTransformation, next_batch, *, num_steps: int,
        key: jax.Array, frozen=None, time_limit_minutes: float = 0.0, log_every_steps: int = 100,
        desc: str = "fit") -> tuple[Any, dict]:
  """Runs `num_steps` steps (fewer if `time_limit_minutes` > 0 passes first) of `tx` on `loss_fn`;
  step i reads `next_batch(i)` and the key `fold_in(key, i)`. Returns (params, info): info holds
  `steps`, `train_seconds` and `history`, the metrics every `log_every_steps` and at the end."""
  step_fn = make_fit_step(loss_fn, tx)
  opt_state = tx.init(params)
  deadline = periodic.Deadline(time_limit_minutes)
  progress = _Progress(num_steps, deadline, desc)
  history, steps, metrics = [], 0, None
  try:
    while steps < num_steps and not deadline.passed():
      params, opt_state, metrics = step_fn(params, opt_state, frozen, next_batch(steps),
                                           jax.random.fold_in(key, steps))
      steps += 1
      logged = None
      if steps % log_every_steps == 0 or steps == num_steps:
        logged = {k: float(v) for k, v in metrics.items()}
        history.append({"step": steps, **logged})
        log.info("%s step %d: %s", desc, steps, logged)
      progress.update(logged)
  finally:
    progress.close()
  if metrics is not None and (not history or history[-1]["step"] != steps):
    history.append({"step": steps, **{k: float(v) for k, v in metrics.items()}})
  return params, {"steps": steps, "train_seconds": deadline.elapsed_seconds(), "history": history}
